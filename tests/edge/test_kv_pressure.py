"""KV-cache pressure: the load factor's contract, and a nearly full backend in routing."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.config import EdgeConfig
from corral.kv_pressure import (
    KV_LEVELS,
    KV_MAX_FACTOR,
    KV_PRESSURE_START,
    kv_level,
    kv_load_factor,
)
from corral.v1 import types_pb2
from edge.balancer import Balancer
from edge.table import BackendState, ReportAging
from tests.edge.snapshot_server import backend, snapshot

MODEL = "tiny"
usage = st.floats(0.0, 1.0)


@given(usage)
def test_factor_is_one_up_to_the_start(value: float) -> None:
    """Up to KV_PRESSURE_START (and when unknown) the load counts once."""
    if value <= KV_PRESSURE_START:
        assert kv_load_factor(value) == 1.0
    assert kv_load_factor(-1.0) == kv_load_factor(float("nan")) == 1.0


@given(usage, usage)
def test_factor_grows_with_usage_and_is_bounded(a: float, b: float) -> None:
    """A fuller cache never counts less; the factor stays in [1, KV_MAX_FACTOR]."""
    low, high = sorted((a, b))
    assert 1.0 <= kv_load_factor(low) <= kv_load_factor(high) <= KV_MAX_FACTOR


def test_factor_doubles_halfway_to_full() -> None:
    """Halfway from the start to full the load counts twice; a full cache counts the most."""
    assert kv_load_factor((KV_PRESSURE_START + 1.0) / 2) == 2.0
    assert kv_load_factor(1.0) == KV_MAX_FACTOR


@given(usage, usage)
def test_same_level_means_factors_close(a: float, b: float) -> None:
    """Two usages on one written level give factors within the level's span."""
    # Writes skipped between levels change the edge's factor at most that much.
    if kv_level(a) != kv_level(b):
        return
    level = kv_level(a)
    top = KV_LEVELS[level] if level < len(KV_LEVELS) else 1.0
    bottom = KV_LEVELS[level - 1] if level else 0.0
    fa, fb = kv_load_factor(a), kv_load_factor(b)
    assert max(fa, fb) / min(fa, fb) <= kv_load_factor(top) / kv_load_factor(bottom)


@settings(max_examples=200)
@given(st.integers(0, 50), st.integers(0, 5), usage)
def test_backend_load_counts_the_factor(reported: int, inflight: int, value: float) -> None:
    """A backend's load is its requests times the factor of the KV use it reports."""
    message = backend("a", "http://127.0.0.1/a", [MODEL], running=reported)
    message.status.load.kv_cache_usage = value
    state = BackendState("a")
    state.update(message, ReportAging(window=0.0, half_life=0.0))
    state.inflight = inflight
    assert state.load() == (reported + inflight) * kv_load_factor(value)


def test_llamacpp_slots_not_kv_use_say_how_busy_it_is() -> None:
    """A server reporting slots counts load once, whatever its KV use; nearly full, no free slot."""
    message = backend("a", "http://127.0.0.1/a", [MODEL], running=1)
    message.status.models[0].metadata["total_slots"] = "4"
    message.status.load.kv_cache_usage = 0.95
    state = BackendState("a")
    state.update(message, ReportAging(window=0.0, half_life=0.0))
    assert state.load() == 1 and not state.free_slot()


def vllm(name: str, running: int, kv: float | None) -> types_pb2.Backend:
    """A vLLM backend as its agent reports it: queue counts and KV use, no slots."""
    message = backend(name, f"http://127.0.0.1/{name}", [MODEL], running=running)
    if kv is not None:
        message.status.load.kv_cache_usage = kv
    return message


def new_conversations(balancing: str, full_kv: float | None) -> Counter[str]:
    """Where 90 new conversations go when backend `a` reports `full_kv` and b, c a third."""
    balancer = Balancer(EdgeConfig(balancing=balancing), rng=random.Random(7))
    balancer.apply(snapshot(1, [vllm("a", 4, full_kv), vllm("b", 4, 0.3), vllm("c", 4, 0.3)]))
    route = balancer.route_for(MODEL)
    chosen: Counter[str] = Counter()
    for conversation in range(90):
        found = balancer.pick(route, conversation.to_bytes(16, "big"), set())
        assert isinstance(found, tuple)
        balancer.acquire(found[0])  # every conversation stays in flight
        chosen[found[0].name] += 1
    return chosen


def test_nearly_full_backend_gets_fewer_new_conversations() -> None:
    """A 95 % KV-full backend gets under half a peer's new conversations (sticky and least-conn)."""
    # Reporting no KV use, it gets a third of them.
    for balancing in ("sticky", "least-connections"):
        pressured = new_conversations(balancing, 0.95)
        assert 2 * pressured["a"] < min(pressured["b"], pressured["c"]), balancing
        plain = new_conversations(balancing, None)
        assert abs(plain["a"] - 30) <= 8, balancing
