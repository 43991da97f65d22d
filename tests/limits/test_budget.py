"""A spend budget hit by concurrent requests across three edges sharing one real Valkey."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from edge.gateway.limits import Limiter, Refused, SharedCounters, Subject
from edge.gateway.limits.policy import MICROS_PER_USD, Limits, parse_budget
from edge.gateway.valkey import Valkey
from tests.limits.drive import Clock
from tests.support.valkey import ValkeyServer

BUDGET = parse_budget(1.0, period="fixed", window_seconds=30, anchor=0, soft=0.8)
TEAM = Subject("team", "research", Limits(budget=BUDGET))


@pytest.fixture
async def edges(valkey: ValkeyServer) -> AsyncIterator[tuple[list[Limiter], Clock]]:
    clock = Clock(now=30.0 * 60_000_000)
    limiters = [
        Limiter(SharedCounters(Valkey(valkey.url, timeout=5.0)), edge_id=f"e{i}", clock=clock)
        for i in range(3)
    ]
    yield limiters, clock
    for limiter in limiters:
        await limiter.close()


async def _round(limiters: list[Limiter], rng: random.Random, over: int) -> tuple[int, int, int]:
    """60 concurrent requests (20 per edge), each reserving $0.05 and costing $0.02-0.05
    (plus `over` micro-dollars beyond its reservation): (admitted, spend, excess)."""
    reserve = 50_000

    async def one(limiter: Limiter) -> tuple[int, int]:
        try:
            ticket = await limiter.admit([TEAM], cost=reserve)
        except Refused as exc:
            assert exc.reason == "budget"
            return 0, 0
        await asyncio.sleep(rng.uniform(0, 0.01))  # the answer streams for a while
        actual = rng.randint(20_000, reserve) + over
        limiter.settle(ticket, cost=actual)
        return 1, actual

    results = await asyncio.gather(*(one(limiters[i % 3]) for i in range(60)))
    admitted = sum(a for a, _ in results)
    spend = sum(s for _, s in results)
    return admitted, spend, admitted * over


@pytest.mark.parametrize("over", [0, 5_000])
async def test_budget_holds_and_resets(
    edges: tuple[list[Limiter], Clock], valkey: ValkeyServer, over: int
) -> None:
    """Spend stays within $1 plus the documented bound, counted exactly; after reset, all pass."""
    limiters, clock = edges
    rng = random.Random(over)
    spend = excess = admitted = 0
    for _ in range(10):
        got, spent, beyond = await _round(limiters, rng, over)
        admitted, spend, excess = admitted + got, spend + spent, excess + beyond
        clock.now += 0.5
        if got == 0:
            break
    assert admitted >= 20  # at least $1 / $0.05 reservations went through
    assert spend <= MICROS_PER_USD + excess, (spend, excess)
    assert spend >= MICROS_PER_USD - 3 * 50_000 - 60 * 50_000 // 2  # nowhere near unused
    assert any(lim.stats.warnings for lim in limiters)  # past the 80 % soft threshold
    # Give back every lease: the store then counts what was spent, to the micro-dollar.
    for limiter in limiters:
        await limiter.quiesce()
        for bucket in limiter._buckets.values():
            bucket.last_used = -1.0
        await limiter.sweep()
    keys = valkey.command("KEYS", "{corral}:lim:team:research:b:*").split(b"\r\n")
    key = next(k for k in keys if k.startswith(b"{corral}"))
    value = valkey.command("GET", key.decode()).split(b"\r\n")[1]
    assert int(value) == spend
    # The next window: the budget is whole again.
    clock.now += 30
    got, _, _ = await _round(limiters, rng, 0)
    assert got >= 17  # 20 reservations fit; each edge may hold a lease too small for one


async def test_a_budget_moved_to_another_unit_counts_afresh() -> None:
    """$50/day, then 1,000 tokens/day mid-day: the tokens are counted (and refused at 1,000)."""
    from edge.gateway.limits.plan import Plan
    from edge.gateway.limits.policy import TOKENS, USD
    from edge.gateway.limits.store import LocalCounters

    limiter = Limiter(LocalCounters())
    try:
        dollars = Subject("team", "research", Limits(budget=parse_budget(50, unit=USD)))
        await limiter.admit(Plan([dollars]), tokens=100, cost=1000)
        tokens = Plan([Subject("team", "research", Limits(budget=parse_budget(1000, unit=TOKENS)))])
        admitted = 0
        with pytest.raises(Refused):
            for _ in range(50):
                limiter.settle(await limiter.admit(tokens, tokens=400, cost=0), tokens=400)
                admitted += 1
        assert admitted == 2 and tokens.buckets[0].key.split(":")[-2] == TOKENS
    finally:
        await limiter.close()
