"""Lease calls whose answers never reached the edge in time, against a real Valkey: what the
store did for them is put right by the edge's next call, so no grant is lost or counted twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from edge.gateway.limits import Limiter, Limits, Refused, SharedCounters, Subject
from edge.gateway.valkey import Valkey
from tests.limits.drive import Clock
from tests.support.valkey import ValkeyServer

KEY = Subject("key", "ck_late", Limits(rpm=20, parallel=1))


class LateValkey(Valkey):
    """The edge's client with the production deadline, whose next operations can be made to
    answer after it: run on the server at once (`late`), or held on their way (`hold`)."""

    def __init__(self, url: str) -> None:
        # Retried at once after a failure: the next call is the one that puts things right.
        super().__init__(url, timeout=0.25, retry_base=0.0, retry_cap=0.0)
        self.late = 0
        self.hold = 0
        self.held: list[Awaitable[Any]] = []

    async def call(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        never = asyncio.Event()
        if self.late > 0:
            self.late -= 1

            async def answered_late(client: Any) -> Any:
                await op(client)  # the server has run it
                await never.wait()  # its answer comes after the deadline
                return None

            return await super().call(answered_late)
        if self.hold > 0:
            self.hold -= 1

            async def on_its_way(client: Any) -> Any:
                self.held.append(op(client))  # sent, reaching the server when the test says
                await never.wait()
                return None

            return await super().call(on_its_way)
        return await super().call(op)


async def _admit_all(limiter: Limiter) -> tuple[int, Refused]:
    """Admit and settle one request at a time until a 429: (admitted, that refusal)."""
    admitted = 0
    while True:
        try:
            limiter.settle(await limiter.admit([KEY]))
        except Refused as exc:
            if exc.status == 429:
                return admitted, exc
            continue  # a call that missed the deadline on a busy machine: put right next
        admitted += 1


async def _store_matches_edge(limiter: Limiter, valkey: ValkeyServer) -> None:
    """Every counter in the store holds exactly what the edge counted there."""
    probe = Valkey(valkey.url, timeout=5.0)
    try:
        for bucket in limiter._buckets.values():
            if bucket.gauge:
                held = await probe.call(lambda r, key=bucket.key: r.hvals(key))
                assert sum(int(v) for v in held) == bucket.contributed, bucket.key
            else:
                value = await probe.call(lambda r, key=bucket.key: r.get(key))
                assert int(value) == bucket.contributed, bucket.key
    finally:
        await probe.close()


async def test_grants_answered_after_the_deadline_are_not_lost(valkey: ValkeyServer) -> None:
    """Three calls granted but answered too late: the key still gets its whole limit."""
    store = LateValkey(valkey.url)
    counters = SharedCounters(store)
    limiter = Limiter(counters, edge_id="e0", fail_open=False, clock=Clock())
    try:
        store.late = 3
        for _ in range(3):
            with pytest.raises(Refused) as refused:
                await limiter.admit([KEY])
            assert refused.value.status == 503  # failing closed: the edge saw no grant
        admitted, refusal = await _admit_all(limiter)
        assert (admitted, refusal.reason) == (20, "rpm")
        assert counters.unanswered == 0
        await _store_matches_edge(limiter, valkey)  # 20 requests, the one slot held here
    finally:
        await limiter.close()


async def test_a_call_arriving_after_the_edge_moved_on_changes_nothing(
    valkey: ValkeyServer,
) -> None:
    """A call that reaches the store only after the edge's next call is given up there."""
    store = LateValkey(valkey.url)
    counters = SharedCounters(store)
    limiter = Limiter(counters, edge_id="e0", fail_open=False, clock=Clock())
    try:
        store.hold = 1
        with pytest.raises(Refused):
            await limiter.admit([KEY])
        limiter.settle(await limiter.admit([KEY]))  # the edge's next call
        await store.held.pop()  # the first reaches the store only now
        admitted, _ = await _admit_all(limiter)
        assert admitted == 19
        await _store_matches_edge(limiter, valkey)
        assert counters.unanswered == 0
    finally:
        await limiter.close()


async def test_a_return_answered_after_the_deadline_is_not_counted_twice(
    valkey: ValkeyServer,
) -> None:
    """Unused quota given back by a call answered too late comes off the store once."""
    store = LateValkey(valkey.url)
    counters = SharedCounters(store)
    limiter = Limiter(counters, edge_id="e0", fail_open=False, idle_return=0.0, clock=Clock())
    try:
        limiter.settle(await limiter.admit([KEY]))
        store.late = 1
        await limiter.sweep()  # idle: the lease goes back, the store takes it, no answer
        await limiter.sweep()  # the edge sends it again
        assert {b.reason: b.contributed for b in limiter._buckets.values()} == {
            "rpm": 1,
            "parallel": 0,
        }
        await _store_matches_edge(limiter, valkey)
    finally:
        await limiter.close()
