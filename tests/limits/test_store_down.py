"""The counter store killed and restarted mid-run: nothing hangs, the policy holds, and
counting resumes (what edges had counted is restored into the empty store)."""

from __future__ import annotations

import time

import pytest

from edge.gateway.limits import Limiter, Limits, Refused, SharedCounters, Subject
from edge.gateway.valkey import Valkey
from tests.limits.drive import Clock
from tests.support.net import eventually, free_port
from tests.support.valkey import ValkeyServer

KEY = Subject("key", "ck_fault", Limits(rpm=600))


def _limiters(valkey: ValkeyServer, clock: Clock, *, fail_open: bool) -> list[Limiter]:
    return [
        Limiter(
            SharedCounters(Valkey(valkey.url, timeout=0.2, retry_base=0.05, retry_cap=0.2)),
            edge_id=f"e{i}",
            clock=clock,
            fail_open=fail_open,
        )
        for i in range(3)
    ]


async def _offer(limiters: list[Limiter], clock: Clock, count: int) -> tuple[int, list[int]]:
    """`count` requests, 60/30/10 over the edges, 10 ms apart: (admitted, refusal statuses);
    no single admission may take longer than a second."""
    admitted, statuses = 0, []
    for i in range(count):
        limiter = limiters[0 if i % 10 < 6 else 1 if i % 10 < 9 else 2]
        started = time.monotonic()
        try:
            await limiter.admit([KEY])
            admitted += 1
        except Refused as exc:
            statuses.append(exc.status)
        assert time.monotonic() - started < 1.0
        clock.now += 0.01
        if i % 50 == 49:  # every edge's upkeep runs every 0.5 s
            for each in limiters:
                await each.sweep()
    return admitted, statuses


async def _store_count(valkey: ValkeyServer) -> int:
    keys = [k for k in valkey.command("KEYS", "*ck_fault:rpm*").split(b"\r\n") if b"{" in k]
    if not keys:
        return 0
    return int(valkey.command("GET", keys[0].decode()).split(b"\r\n")[1])


async def test_fail_open_counts_local_shares_then_resumes(valkey: ValkeyServer) -> None:
    """Fail open: store down, edges admit their share; restarted, counts go back and limits hold."""
    clock = Clock(now=60.0 * 40_000_000)
    limiters = _limiters(valkey, clock, fail_open=True)
    try:
        before, _ = await _offer(limiters, clock, 200)
        assert before == 200
        valkey.kill()
        trips = sum(lim.stats.round_trips for lim in limiters)
        during, statuses = await _offer(limiters, clock, 1000)
        assert set(statuses) <= {429}
        # An edge whose share is used up refuses at once, without asking the store again
        # for each request (once every 0.25 s per counter, and its upkeep).
        assert sum(lim.stats.round_trips for lim in limiters) - trips < 1000 - during
        # Within the window: at most the limit overall (each edge stops at its third).
        assert before + during <= 600 + 3
        assert sum(lim.stats.store_errors for lim in limiters) >= 1
        valkey.start()
        for limiter in limiters:  # the store comes back by itself for the next call
            await eventually(limiter.counters.store.ping, within=10)
        after, _ = await _offer(limiters, clock, 300)
        for limiter in limiters:
            await limiter.quiesce()
        total = before + during + after
        assert total <= 600 + 3, (before, during, after)
        # The restored count (contributions, fallback grants and new leases) is in the store.
        assert await _store_count(valkey) >= total
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_an_edge_that_saw_no_failure_puts_its_count_back(valkey: ValkeyServer) -> None:
    """A store restarted empty between calls: next upkeep sees the new epoch, puts counts back."""
    clock = Clock(now=60.0 * 40_000_000 + 120)
    quiet, busy, _ = _limiters(valkey, clock, fail_open=True)
    for limiter in (quiet, busy):
        limiter.probe_every = 0.0  # the upkeep's probe at every sweep (1 s apart in service)
    try:
        for limiter in (quiet, busy):
            for _ in range(100):
                await limiter.admit([KEY])
            await limiter.quiesce()
            await limiter.sweep()
        counted = sum(sum(b.contributed for b in lim._buckets.values()) for lim in (quiet, busy))
        assert await _store_count(valkey) == counted
        valkey.kill()
        valkey.start()  # `quiet` makes no call in between: it sees no failure
        await eventually(busy.counters.store.ping, within=10)
        await busy.sweep()  # the first to notice: grants are held off from here on
        assert busy.counters_healthy() and await _store_count(valkey) < counted
        await quiet.sweep()
        assert await _store_count(valkey) == counted
        assert quiet.stats.store_errors == 0
    finally:
        for limiter in (quiet, busy):
            await limiter.close()


async def test_fail_closed_refuses_with_503_and_recovers(valkey: ValkeyServer) -> None:
    """Fail closed: leases used up, requests get 503 at once (no hang); after restart they pass."""
    clock = Clock(now=60.0 * 40_000_000 + 60)
    limiters = _limiters(valkey, clock, fail_open=False)
    try:
        assert (await _offer(limiters, clock, 50))[0] == 50
        valkey.kill()
        admitted, statuses = await _offer(limiters, clock, 200)
        assert statuses and set(statuses) == {503}
        assert admitted < 200
        valkey.start()

        async def passes() -> bool:
            clock.now += 0.01
            try:
                await limiters[0].admit([KEY])
            except Refused:
                return False
            return True

        await eventually(passes, within=10)
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_fail_open_gives_back_parallel_slots_while_the_store_is_down() -> None:
    """Store down, max_parallel 2, one request at a time: freed slots come back here."""
    two = Subject("key", "ck_fo", Limits(parallel=2))
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: the store is down
    limiter = Limiter(SharedCounters(Valkey(url, timeout=0.05)), edge_id="e0", idle_return=0.0)
    try:
        for _ in range(6):
            limiter.settle(await limiter.admit([two]))
            await limiter.sweep()  # idle: the slot is given back
        held = [await limiter.admit([two]) for _ in range(2)]
        with pytest.raises(Refused) as refused:  # two in flight: the limit holds
            await limiter.admit([two])
        assert refused.value.reason == "parallel"
        for ticket in held:
            limiter.settle(ticket)
    finally:
        await limiter.close()
