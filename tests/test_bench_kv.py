"""The KV-memory routing simulation's own accounting (never its speed): paged KV memory,
every request served, and the KV use reaching the edge's real Balancer."""

from __future__ import annotations

import dataclasses

from bench.kvcache import BLOCK, PagedKvCache, Workload, block_hashes
from bench.routing_kv import POLICIES, kv_cost, simulate_kv

TINY = Workload(
    conversations=12,
    turns=3,
    groups=2,
    system_tokens=64,
    first_user_tokens=48,
    think_ms=500.0,
    long_share=0.3,
    long_factor=8,
    seed=4,
)


def hashes(prefix: str, blocks: int) -> list[bytes]:
    return block_hashes([f"{prefix}{i}" for i in range(blocks * BLOCK)])


def test_running_blocks_are_held_and_finished_ones_cached_until_evicted() -> None:
    """Held blocks count as use and are never evicted; finished ones stay cached until needed."""
    kv = PagedKvCache(capacity_blocks=6)
    a, b = hashes("a", 4), hashes("b", 4)
    kv.admit(a)
    assert kv.usage() == 4 / 6 and not kv.fits(b)
    kv.release(a)
    assert kv.usage() == 0 and kv.lookup(a) == 4 * BLOCK and kv.fits(b)
    kv.admit(b)  # takes two of a's cached blocks, the least recently used first
    assert kv.evicted == 2 and kv.lookup(a) == 0 and kv.lookup(b) == 4 * BLOCK


def test_shared_prefix_is_held_once() -> None:
    """Two running sequences sharing a prefix hold its blocks once."""
    kv = PagedKvCache(capacity_blocks=6)
    shared = hashes("s", 2)
    first = shared + hashes("x", 2)
    second = shared + hashes("y", 2)
    kv.admit(first)
    assert kv.fits(second)
    kv.admit(second)
    assert kv.usage() == 1.0
    kv.release(first)
    assert kv.usage() == 4 / 6


def test_every_request_is_served_once_with_and_without_kv() -> None:
    """Every turn is served; cached tokens never exceed the ideal; waits are never negative."""
    cost = kv_cost(TINY)
    for policy in POLICIES:
        for with_kv in (False, True):
            stats = simulate_kv(policy, with_kv, TINY, cost, seed=3)
            assert stats.requests == len(stats.waits) == TINY.conversations * TINY.turns
            assert 0 <= stats.cached_tokens <= stats.ideal_cached_tokens <= stats.prompt_tokens
            assert min(stats.waits) >= 0 and all(t > 0 for t in stats.ttft)
            assert (
                0 < stats.level_writes <= stats.reports and 0 < stats.step_writes <= stats.reports
            )


def test_kv_use_changes_routing_only_when_reported() -> None:
    """With memory tight, KV use in snapshots changes routing; without it routing is the same."""
    tight = dataclasses.replace(kv_cost(TINY), capacity_blocks=kv_cost(TINY).capacity_blocks // 2)
    plain = simulate_kv("least-connections", False, TINY, tight, seed=1)
    again = simulate_kv("least-connections", False, TINY, tight, seed=1)
    with_kv = simulate_kv("least-connections", True, TINY, tight, seed=1)
    assert (plain.ttft, plain.per_backend) == (again.ttft, again.per_backend)
    assert plain.ttft != with_kv.ttft
