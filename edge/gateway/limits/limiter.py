"""The limiter: admits a request from local leases, settles it after, refills in few calls.

Per request, on the hot path: find each limited counter's bucket (rpm, tpm, parallel,
budget; for the key, its team, or the client address), and if every lease holds the amount
this request needs, take it: no await, no store call. Only an empty lease makes a request
wait for one store call (bounded by the store's short deadline), shared by every request
waiting on the same counters; leases running low are refilled in the background.

After the answer, `settle` trues the reservation up to what was used: unused tokens or
spend go back to the local lease, an excess is taken from it or owed to the store.

The overshoot bound (docs/GATEWAY.md): while the store answers, the requests admitted in a
window never exceed the limit (every admission comes out of a grant the store made within
it); tokens and spend exceed it by at most the sum, over the requests of the window, of
their use beyond their reservation (0 when the answer stays within max_tokens or the cap and
the prompt estimate is not below the real count).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from corral.tasks import retrieved
from edge.gateway.limits.bucket import PER_REQUEST, Bucket
from edge.gateway.limits.fallback import grant_locally
from edge.gateway.limits.plan import Plan
from edge.gateway.limits.policy import BUDGET, STORE
from edge.gateway.limits.stats import LimitStats
from edge.gateway.limits.store import Ask, Counters, LocalCounters
from edge.gateway.limits.ticket import Refused, StoreDown, Subject, Ticket
from edge.gateway.valkey import StoreError

log = logging.getLogger(__name__)

# After the store said "not enough left", needs as large are refused here without a store
# call, for 0.25 s, then twice as long each time, up to 2 s (others' returns may make room).
_SHORT_FIRST = 0.25
_SHORT_CAP = 2.0
_TRIES = 32
# A plan's buckets note their use and fold in their demand estimate this often, at most.
_SAMPLE_EVERY = 0.5


class Limiter:
    """Admits and settles against one counter store, failing open or closed when it is down."""

    def __init__(
        self,
        counters: Counters,
        *,
        edge_id: str = "",
        window_seconds: float = 60.0,
        horizon: float = 2.0,
        fail_open: bool = True,
        idle_return: float = 3.0,
        probe_every: float = 1.0,
        clock: Callable[[], float] = time.time,
        stats: LimitStats | None = None,
    ) -> None:
        self.counters = counters
        # Unique per process: gauges keep each edge's holding apart.
        self.edge_id = f"{edge_id or 'edge'}:{os.getpid()}:{os.urandom(3).hex()}"
        self.window = window_seconds
        self.horizon = horizon
        self.fail_open = fail_open
        self.idle_return = idle_return
        self.probe_every = probe_every
        self.clock = clock
        self.stats = stats or LimitStats()
        self.edges = 1  # active edges, as the store last said
        self.fallback = LocalCounters(share=1.0, clock=clock)
        self._buckets: dict[tuple[str, str, str], Bucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._heard = 0.0  # monotonic time of the last store answer
        # Set when the store failed or changed epoch: the next sweep sends every counter, so
        # a restarted store gets back what this edge had counted at once.
        self._resync = False

    # -- admission ---------------------------------------------------------------------

    async def admit(
        self, who: Plan | Sequence[Subject], *, tokens: int = 0, cost: int = 0
    ) -> Ticket:
        """Reserve one request, `tokens` (prompt estimate + max_tokens) and `cost` (units)
        for the plan's subjects (or these subjects); raises Refused naming the first limit
        it is over."""
        plan = who if isinstance(who, Plan) else Plan(who)
        ticket = self.admit_now(plan, tokens, cost)
        if ticket is None:
            await self._wait_for_leases(plan, plan.buckets, (1, tokens, cost))
            ticket = Ticket(plan, plan.buckets, tokens, cost)
        return ticket

    def admit_now(self, plan: Plan, tokens: int, cost: int) -> Ticket | None:
        """The request's ticket when every lease holds what it needs (no store call, no
        await: the steady state); None when one is short, and `admit` asks the store."""
        now = self.clock()
        buckets = plan.buckets
        if now >= plan.until or plan.found_in is not self._buckets:
            buckets = plan.resolve(self._buckets, now, self.window)  # new, or a window ended
            plan.counted = self.stats.cell(plan.label)
        amounts = (1, tokens, cost)  # indexed by a bucket's unit
        for bucket in buckets:
            if bucket.lease < amounts[bucket.unit]:
                return None
        self._take(plan, buckets, amounts, now)
        return Ticket(plan, buckets, tokens, cost)

    def _take(
        self, plan: Plan, buckets: tuple[Bucket, ...], amounts: tuple[int, int, int], now: float
    ) -> None:
        """Take the request's amounts from leases that hold them; refill low ones early."""
        low = False
        for bucket in buckets:  # this loop runs for every request
            amount = amounts[bucket.unit]
            lease = bucket.lease = bucket.lease - amount
            bucket.rate_count += amount
            if lease < amount or lease < bucket.low:
                low = True
        if now - plan.sampled >= _SAMPLE_EVERY:  # not per request: twice a second at most
            plan.sampled = now
            for bucket in buckets:
                bucket.last_used = now  # up to _SAMPLE_EVERY late: idle_return is seconds
                if now - bucket.rate_start >= _SAMPLE_EVERY:
                    bucket.sample_rate(now)
        if low:
            self._prefetch(buckets, amounts, now)
        plan.counted[0] += 1

    async def _wait_for_leases(
        self, plan: Plan, buckets: tuple[Bucket, ...], amounts: tuple[int, int, int]
    ) -> None:
        """Some lease lacks what the request needs: ask the store (once per short bucket,
        joining calls under way), then take; or raise Refused."""
        # Until the store says there is not enough left (or for a bounded number of tries
        # while concurrent requests here take what each lease brought).
        for _ in range(_TRIES):
            now = self.clock()
            # Ask only for what the local lease lacks: lease and store together may suffice.
            short = [
                (b, amounts[b.unit] - max(b.lease, 0)) for b in buckets if b.lease < amounts[b.unit]
            ]
            if not short:
                self._take(plan, buckets, amounts, now)
                return
            over = next((b for b, n in short if b.short_until > now and n >= b.short_need), None)
            if over is not None:
                break
            try:
                await self._refill(short)
            except StoreDown:
                self.stats.refused(plan.subjects, STORE)
                raise Refused(STORE, plan.subjects[0], 1.0, status=503) from None
        now = self.clock()
        bucket = next((b for b in buckets if b.lease < amounts[b.unit]), buckets[0])
        self.stats.refused(plan.subjects, bucket.reason)
        retry = 1.0 if bucket.gauge else bucket.resets - now
        raise Refused(bucket.reason, plan.subject_of(bucket), retry)

    def settle(self, ticket: Ticket, *, tokens: int | None = None, cost: int | None = None) -> None:
        """True up after the answer: actual tokens and cost (None: as reserved); frees the
        parallel slot. Called once per admitted ticket, on success and failure alike."""
        if ticket.settled:
            return
        ticket.settled = True
        reserved = (1, ticket.tokens, ticket.cost)
        used = (
            1,
            ticket.tokens if tokens is None else tokens,
            ticket.cost if cost is None else cost,
        )
        for bucket in ticket.buckets:
            unit = bucket.unit
            if unit == PER_REQUEST:
                if bucket.gauge:
                    bucket.lease += 1  # a spare slot here until idle
                    bucket.last_used = self.clock()
                continue
            delta = used[unit] - reserved[unit]
            if delta < 0:
                if not bucket.retired:
                    bucket.lease -= delta  # unused reservation: admissible again here
            elif delta > 0:
                bucket.charge(delta)
        for subject in ticket.plan.soft:
            budget = subject.limits.budget
            assert budget is not None
            spent = self._buckets.get((subject.kind, subject.name, BUDGET))
            if spent is not None and spent.used - max(spent.lease, 0) >= budget.soft * spent.limit:
                ticket.warned = True
                self.stats.warn(subject, spent.key)

    # -- leases --------------------------------------------------------------------------

    async def _refill(self, short: list[tuple[Bucket, int]]) -> None:
        """Lease for every short bucket in one call, joining calls already under way."""
        waiting = [(b, n) for b, n in short if b.refill is not None]
        todo = [(b, n) for b, n in short if b.refill is None]
        for bucket, need in waiting:
            bucket.queued += need  # the next lease call asks for this too
        try:
            if todo:
                # Its own task, owned by the limiter: a request cancelled while the store
                # answers (the client went away) must not drop the grant the store made.
                call = self._spawn(self._lease(todo))
                call.add_done_callback(retrieved)  # its StoreDown was the request's to see
                await asyncio.shield(call)
            for bucket, _ in waiting:
                if bucket.refill is not None:
                    await asyncio.shield(bucket.refill)
        finally:
            for bucket, need in waiting:
                bucket.queued -= need

    def _claim(self, todo: list[tuple[Bucket, int]]) -> asyncio.Future[None]:
        """Mark these buckets as being refilled (before any await: one call at a time)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for bucket, _ in todo:
            bucket.refill = fut
        return fut

    async def _lease(
        self,
        todo: list[tuple[Bucket, int]],
        *,
        grow: bool = True,
        fut: asyncio.Future[None] | None = None,
    ) -> None:
        """One store call for these buckets (`grow`: asking for quota, else only sending
        returns and debts); fail open, or closed (StoreDown), when the store fails."""
        if fut is None:
            fut = self._claim(todo)
        now = self.clock()
        asks = [
            Ask(
                bucket.key,
                bucket.limit,
                bucket.want(need, now, self.horizon) if grow else 0,
                need,
                # Fallback grants become a debt to the store once it answers again.
                adjust=bucket.pending + bucket.fallback_granted,
                restore=bucket.contributed,
                ttl_ms=bucket.ttl_ms,
                epoch=bucket.epoch,
                gauge=bucket.gauge,
                durable=bucket.durable,
            )
            for bucket, need in todo
        ]
        fallbacks = [bucket.fallback_granted for bucket, _ in todo]
        try:
            self.stats.round_trip()
            try:
                leased = await self.counters.lease(self.edge_id, asks)
            except StoreError as exc:
                self.stats.store_error()
                self._resync = True
                self._degraded(todo, exc, grow)
                return
            self._heard = time.monotonic()
            # While a wiped store settles, its edge set is rebuilding: keep the larger count.
            self.edges = max(self.edges if leased.settling else 1, leased.edges)
            if any(b.epoch and b.epoch != leased.epoch for b, _ in todo):
                self._resync = True
            for (bucket, need), ask, answer, sent_fallback in zip(
                todo, asks, leased.answers, fallbacks, strict=True
            ):
                if sent_fallback or bucket.fallback_seeded:
                    self.fallback.forget("fb:" + bucket.key)
                    bucket.fallback_granted = 0
                    bucket.fallback_seeded = False
                    bucket.fallback_applied = 0
                bucket.pending -= ask.adjust - sent_fallback
                bucket.contributed += ask.adjust + answer.grant
                bucket.lease += answer.grant
                bucket.used = answer.used
                bucket.epoch = leased.epoch
                if answer.grant:
                    bucket.last_grant = answer.grant
                    bucket.low = answer.grant // 4
                    bucket.short_times = 0
                elif need and not leased.settling:
                    bucket.short(need, now, _SHORT_FIRST, _SHORT_CAP)
            if leased.settling and grow:
                self._resync = True
                self._degraded(todo, StoreError("the counter store is settling"), grow)
        finally:
            for bucket, _ in todo:
                if bucket.refill is fut:
                    bucket.refill = None
            fut.set_result(None)

    def _degraded(self, todo: list[tuple[Bucket, int]], exc: Exception, grow: bool) -> None:
        """The store failed: grant from this edge's share (fail open), or raise StoreDown."""
        if not self.fail_open:
            raise StoreDown(str(exc))
        grant_locally(
            self.fallback, todo, edges=self.edges, now=self.clock(), horizon=self.horizon, grow=grow
        )

    def _prefetch(
        self, buckets: tuple[Bucket, ...], amounts: tuple[int, int, int], now: float
    ) -> None:
        """Refill in the background any lease under a quarter of its last grant."""
        low = [
            (b, 0)
            for b in buckets
            if b.refill is None
            and not b.gauge
            and b.rate > 0
            and b.lease < max(amounts[b.unit], b.low)
            and b.short_until <= now
        ]
        if low:
            self._spawn(self._quietly(self._lease(low, fut=self._claim(low))))

    async def _quietly(self, work: Coroutine[Any, Any, None]) -> None:
        """A background refill: the store being down is handled already; anything else is
        logged here, not left for the garbage collector to report."""
        try:
            await work
        except StoreDown:
            pass
        except Exception:
            log.exception("background lease refill failed")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def counters_healthy(self) -> bool:
        store = getattr(self.counters, "store", None)
        return bool(getattr(store, "healthy", True))

    async def quiesce(self) -> None:
        """Wait for background refills under way (tests on a controllable clock)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- upkeep --------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Give back leases idle for `idle_return`, drop windows that ended, send what is
        owed; and, when the store was not heard for `probe_every`, probe it (keeping this
        edge alive there, and finding a store restarted empty in time)."""
        now = self.clock()
        todo: list[tuple[Bucket, int]] = []
        for owner, bucket in list(self._buckets.items()):
            if bucket.resets and bucket.resets <= now:
                del self._buckets[owner]
                bucket.retired = True
                continue
            if bucket.refill is not None:
                continue
            if now - bucket.last_used >= self.idle_return and bucket.lease > 0:
                bucket.give_back()
            if bucket.pending or bucket.fallback_granted or (self._resync and bucket.contributed):
                todo.append((bucket, 0))
        if not todo and self.counters.shared and time.monotonic() - self._heard >= self.probe_every:
            todo = self._probe()
        if todo:
            sent_all = self._resync
            await self._send(todo)
            if not sent_all and self._resync and self.counters_healthy():  # a new epoch
                await self._send([(b, 0) for b in self._buckets.values() if _restorable(b)])

    def _probe(self) -> list[tuple[Bucket, int]]:
        """The gauges (this edge stays alive while it holds slots), else one counter: the
        answer's epoch tells whether the store restarted empty and wants this edge's counts
        back, which must reach it while grants are held off (SharedCounters.settle, 3 s:
        at most `probe_every` + one sweep, 0.5 s, after the first edge noticed)."""
        held = [b for b in self._buckets.values() if _restorable(b)]
        return [(b, 0) for b in held if b.gauge] or [(b, 0) for b in held[:1]]

    async def _send(self, todo: list[tuple[Bucket, int]]) -> None:
        """Send returns, debts and (after a failure or a new epoch) every count; no quota."""
        resync, self._resync = self._resync, False
        with contextlib.suppress(StoreDown):
            await self._lease(todo, grow=False)
        if resync and not self.counters_healthy():
            self._resync = True

    async def close(self) -> None:
        """Give back every unused lease (best effort) and stop background refills."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Once they end, the buckets they were refilling are free: the sweep returns those too.
        await asyncio.gather(*tasks, return_exceptions=True)
        for bucket in self._buckets.values():
            bucket.last_used = float("-inf")
        with contextlib.suppress(Exception):
            await self.sweep()
        await self.counters.close()


def _restorable(bucket: Bucket) -> bool:
    """Counted in the store and not being refilled (a call under way carries it already)."""
    return bucket.refill is None and bucket.contributed > 0
