"""Limits that hold across three edges sharing one real Valkey, driven 60/30/10."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from edge.gateway.limits import Limiter, Limits, SharedCounters, Subject
from edge.gateway.valkey import Valkey
from tests.limits.drive import Clock, drive
from tests.support.valkey import ValkeyServer

WINDOWS = 3


@pytest.fixture
async def edges(valkey: ValkeyServer) -> AsyncIterator[tuple[list[Limiter], Clock]]:
    clock = Clock(now=60.0 * 30_000_000)  # the start of a window
    # Accuracy with a working store: a generous timeout, so a loaded machine's stall is not a
    # store failure (failing open has its own tests: tests/limits/test_store_down.py).
    limiters = [
        Limiter(SharedCounters(Valkey(valkey.url, timeout=5.0)), edge_id=f"e{i}", clock=clock)
        for i in range(3)
    ]
    yield limiters, clock
    for limiter in limiters:
        await limiter.close()


@pytest.mark.parametrize("load", [1.05, 2.0, 20.0])
async def test_rpm_holds_across_edges(edges: tuple[list[Limiter], Clock], load: float) -> None:
    """A 600 RPM key: per window at most the limit (+1 %), and at 1.05x at least 97 %."""
    limiters, clock = edges
    subjects = [Subject("key", "ck_rpm", Limits(rpm=600))]
    out = await drive(limiters, clock, subjects, rate=load * 10, seconds=60 * WINDOWS)
    windows = sorted(out.admitted)
    assert len(windows) == WINDOWS
    for index in windows:
        assert out.admitted[index] <= 606, out.admitted
        assert out.admitted[index] >= 582, out.admitted  # offered >= 1.05x: 97 %
    # Leases, not a round trip per request (2 a second at 10 requests a second, 1.05x).
    trips = sum(lim.stats.round_trips for lim in limiters)
    assert trips < out.offered / 4, (trips, out.offered)


def _usage(rng: random.Random) -> tuple[int, int]:
    prompt = rng.randint(10, 40)
    max_tokens = 100
    return prompt + max_tokens, prompt + rng.randint(20, max_tokens)


@pytest.mark.parametrize("load", [1.05, 2.0, 20.0])
async def test_tpm_holds_with_streaming(edges: tuple[list[Limiter], Clock], load: float) -> None:
    """A 60k TPM key, 2 s streams: per window at most the limit (+1 %), at 1.05x at least 97 %."""
    # Requests reserve prompt + max_tokens and settle after streaming.
    limiters, clock = edges
    subjects = [Subject("key", "ck_tpm", Limits(tpm=60_000))]
    mean_actual = 25 + 60
    rate = load * 60_000 / 60 / mean_actual
    out = await drive(
        limiters, clock, subjects, rate=rate, seconds=60 * WINDOWS, usage=_usage, duration=2.0
    )
    for index in sorted(out.tokens):
        assert out.tokens[index] <= 60_600, out.tokens
        assert out.tokens[index] >= 58_200, out.tokens
