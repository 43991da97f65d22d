"""Concurrent-request limits across edges, and the grant rule the Lua script shares with the
in-process store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.gateway.limits import Limiter, Limits, Refused, SharedCounters, Subject
from edge.gateway.limits.shared import PREFIX
from edge.gateway.limits.store import Ask, slice_of
from edge.gateway.valkey import Valkey
from tests.support.net import eventually
from tests.support.valkey import ValkeyServer

KEY = Subject("key", "ck_par", Limits(parallel=4))


def _edges(valkey: ValkeyServer, count: int = 3) -> list[Limiter]:
    return [
        Limiter(
            SharedCounters(Valkey(valkey.url, timeout=5.0), liveness=1.0),
            edge_id=f"e{i}",
        )
        for i in range(count)
    ]


async def test_parallel_limit_across_edges_and_a_crashed_edge(valkey: ValkeyServer) -> None:
    """Four in flight at most over three edges; freed slots go to any edge, a dead edge's return."""
    edges = _edges(valkey)
    try:
        held = [await edges[i % 3].admit([KEY]) for i in range(4)]
        for edge in edges:
            with pytest.raises(Refused) as refused:
                await edge.admit([KEY])
            assert refused.value.reason == "parallel"
        # Edge 0's request ends; its slot is a spare there at once, and given back when idle.
        edges[0].settle(held[0])
        await edges[0].admit([KEY])
        # Edge 1 "crashes" holding its slot: it never settles nor talks to the store again.
        crashed = edges.pop(1)
        for edge in edges:
            edge.idle_return = 0.0
            await edge.sweep()

        async def slot_back() -> bool:
            try:
                await edges[1].admit([KEY])
            except Refused:
                return False
            return True

        await eventually(slot_back, within=10)
        await crashed.counters.close()
    finally:
        for edge in edges:
            await edge.close()


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(0, 10_000),
    used=st.integers(0, 10_000),
    want=st.integers(0, 5_000),
    need=st.integers(0, 500),
)
def test_lua_and_python_grant_alike(
    valkey_once: ValkeyServer, limit: int, used: int, want: int, need: int
) -> None:
    """The script's grant equals slice_of() for any limit, use, want and need (one edge)."""
    import asyncio

    async def grant() -> int:
        store = Valkey(valkey_once.url, timeout=5.0)  # arithmetic, not timeouts
        counters = SharedCounters(store, share=4.0)
        key = f"{PREFIX}prop:{limit}:{used}:{want}:{need}"
        try:
            await store.call(lambda r: r.delete(key))
            await store.call(lambda r: r.set(key, used))
            await store.call(lambda r: r.delete(PREFIX + "edges"))
            leased = await counters.lease("prop", [Ask(key, limit, want, need)])
            return leased.answers[0].grant
        finally:
            await store.close()

    assert asyncio.run(grant()) == slice_of(limit, used, want, need, 4.0, 1)


async def test_a_request_gone_during_its_lease_call_keeps_the_grant(valkey: ValkeyServer) -> None:
    """A client leaving while the store answers: the slot granted comes back, none is lost."""
    answered = asyncio.Event()
    release = asyncio.Event()

    class SlowAnswer(SharedCounters):
        async def lease(self, edge: str, asks: list[Ask]) -> Any:
            out = await super().lease(edge, asks)  # the store has granted
            answered.set()
            await release.wait()  # its answer still on its way
            return out

    one = Subject("key", "ck_gone", Limits(parallel=1))
    limiter = Limiter(SlowAnswer(Valkey(valkey.url, timeout=5.0)), edge_id="e0", idle_return=0.0)
    try:
        request = asyncio.create_task(limiter.admit([one]))
        await answered.wait()
        request.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await request
        release.set()
        await limiter.quiesce()  # the lease call ends on its own, its grant kept
        await limiter.sweep()  # idle: given back to the store
        for _ in range(3):  # one at a time: each gets the one slot
            limiter.settle(await limiter.admit([one]))
            await limiter.sweep()
    finally:
        release.set()
        await limiter.close()
