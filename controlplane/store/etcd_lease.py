"""Keeping etcd leases alive over ONE long-lived LeaseKeepAlive stream per store.

A new stream per heartbeat burns etcd CPU; one bidirectional stream carries every kept lease's
refresh about every ttl/3, and the one-shot refreshes asked for with `refresh` (agent sessions:
one per message from the agent; several asked for one lease before the sender gets to them go
out as one). When the stream breaks (member down, leader lost), a new one is opened on the next
endpoint; every kept lease is refreshed at once, and one-shot refreshes still unanswered are
sent again.

A stream that stops answering (a frozen member, an overloaded etcd, a write stuck behind
flow control) is found by a watchdog that does not depend on the sender: any refresh asked
for or sent and unanswered for the stall limit (stall_timeout, at most a third of the TTL)
reopens the stream on the next endpoint. A refresh answered with TTL <= 0 (etcd no longer
knows the lease: it expired or was revoked) is reported to the lost-lease listener, so the
owner of the lease can end the session at once instead of writing into a dead lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass
from math import inf
from typing import Any

import grpc
from aetcd import rpc

from controlplane.store.etcd_conn import REQUIRE_LEADER, EndpointPool, cancel_and_wait
from corral.backoff import Backoff

log = logging.getLogger(__name__)

# Never refresh more often than this, whatever the TTL.
_MIN_INTERVAL = 0.1
# Never call a stream stalled sooner than this after a refresh went unanswered.
_MIN_STALL = 0.3


def _report_crash(task: asyncio.Task[None]) -> None:
    # Only a bug ends the keeper other than close(); say so at once, not at shutdown.
    if not task.cancelled() and task.exception() is not None:
        log.error("etcd lease keeper crashed; leases are no longer kept", exc_info=task.exception())


@dataclass(eq=False)
class _Kept:
    id: int
    ttl: int
    due: float  # loop time of the next refresh
    # Loop time of a refresh sent and not yet answered; too long means the stream stalled.
    waiting_since: float | None = None


class LeaseKeeper:
    """Owns the keepalive task; `keep`/`release` say which leases it refreshes."""

    def __init__(self, pool: EndpointPool, *, connect_timeout: float, stall_timeout: float) -> None:
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._stall_timeout = stall_timeout
        self._leases: dict[int, _Kept] = {}
        # One-shot refreshes: asked for and not yet sent (loop time first asked) ...
        self._oneshot: dict[int, float] = {}
        # ... and sent, not yet answered (loop time sent).
        self._oneshot_sent: dict[int, float] = {}
        # The smallest TTL seen in answers to one-shot refreshes (bounds the stall limit).
        self._oneshot_ttl = float("inf")
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Refreshes answered by etcd since start (tests and metrics watch it move).
        self.refreshes = 0
        self.streams_opened = 0
        # Leases etcd answered as gone (tests and metrics watch it move).
        self.lost = 0
        # Loop time of the last answer with a live TTL (any lease): the keepalive path works.
        self._answered_at = -inf
        self._on_lost: Callable[[int], None] | None = None

    def set_lost_listener(self, listener: Callable[[int], None] | None) -> None:
        """listener(lease_id) is called when a refresh finds the lease gone."""
        self._on_lost = listener

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="etcd-lease-keepalive")
            self._task.add_done_callback(_report_crash)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)

    def answer_age(self) -> float:
        """Seconds since etcd last confirmed a refresh (inf before the first)."""
        return asyncio.get_running_loop().time() - self._answered_at

    def kept(self) -> list[int]:
        return list(self._leases)

    def keep(self, lease_id: int, ttl: int, *, refresh_now: bool) -> None:
        now = asyncio.get_running_loop().time()
        due = now if refresh_now else now + max(_MIN_INTERVAL, ttl / 3)
        self._leases[lease_id] = _Kept(lease_id, ttl, due)
        self._changed.set()

    def release(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)

    def refresh(self, lease_id: int) -> None:
        """Send one keepalive for the lease soon (coalesced); kept leases need none."""
        if lease_id in self._leases or lease_id in self._oneshot:
            return
        self._oneshot[lease_id] = asyncio.get_running_loop().time()
        self._changed.set()

    def forget(self, lease_id: int) -> None:
        """Drop a lease from every list (it was revoked)."""
        self._leases.pop(lease_id, None)
        self._oneshot.pop(lease_id, None)
        self._oneshot_sent.pop(lease_id, None)

    async def _run(self) -> None:
        # The first retry at once: most breaks are one member going away.
        backoff = Backoff(first=0.05, cap=5.0)
        while True:
            while not self._leases and not self._oneshot:
                self._changed.clear()
                await self._changed.wait()
            index = self._pool.current
            url = self._pool.endpoints[index].url
            stubs = await self._pool.ready(index, self._connect_timeout)
            if stubs is None:
                self._pool.rotate(index)
                await asyncio.sleep(backoff.next())
                continue
            call = stubs.lease.LeaseKeepAlive(metadata=REQUIRE_LEADER)
            self.streams_opened += 1
            now = asyncio.get_running_loop().time()
            for kept in self._leases.values():
                kept.due = now  # TTLs may have reset on another member: refresh at once
                kept.waiting_since = None
            # One-shot refreshes lost with the old stream go out again on this one; the
            # stall clock restarts for everything (this stream has not been asked yet).
            for lease_id in self._oneshot_sent:
                self._oneshot[lease_id] = now
            self._oneshot_sent.clear()
            for lease_id in self._oneshot:
                self._oneshot[lease_id] = now
            receiver = asyncio.create_task(self._receive(call, backoff), name="etcd-keepalive-recv")
            sender = asyncio.create_task(self._send(call), name="etcd-keepalive-send")
            watchdog = asyncio.create_task(self._watchdog(), name="etcd-keepalive-watchdog")
            try:
                done, _ = await asyncio.wait(
                    {receiver, sender, watchdog}, return_when=FIRST_COMPLETED
                )
            finally:
                call.cancel()
                await cancel_and_wait(watchdog, sender, receiver)
            for task in done:
                reason = task.result()  # a bug in our code surfaces here
                log.warning("etcd keepalive stream on %s: %s; reconnecting", url, reason)
            self._pool.rotate(index)
            await asyncio.sleep(backoff.next())

    async def _receive(self, call: grpc.aio.StreamStreamCall[Any, Any], backoff: Backoff) -> str:
        """Apply answers until the stream ends; say why it did."""
        try:
            async for response in call:
                backoff.reset()
                self._answered(response)
        except grpc.aio.AioRpcError as exc:
            return f"broke ({exc.code().name} {exc.details()})"
        return "ended by etcd"

    def _answered(self, response: rpc.LeaseKeepAliveResponse) -> None:
        if response.TTL > 0:
            self._answered_at = asyncio.get_running_loop().time()
        oneshot = self._oneshot_sent.pop(response.ID, None) is not None
        if oneshot and response.TTL > 0:
            self.refreshes += 1
            self._oneshot_ttl = min(self._oneshot_ttl, float(response.TTL))
        kept = self._leases.get(response.ID)
        if kept is not None:
            kept.waiting_since = None
            # The sender may be waiting with no lease due (all were awaiting answers): this
            # one has a due time again.
            self._changed.set()
            if response.TTL > 0:
                self.refreshes += 1
                kept.ttl = int(response.TTL)
                return
            # etcd no longer knows the lease: it expired or was revoked elsewhere.
            log.warning("etcd lease %x is gone; no longer keeping it", response.ID)
            del self._leases[response.ID]
        elif not oneshot or response.TTL > 0:
            return
        self._oneshot.pop(response.ID, None)  # no use refreshing it again
        self.lost += 1
        if self._on_lost is not None:
            self._on_lost(response.ID)

    def _stall_limit(self, kept: _Kept) -> float:
        # Notice an unanswered refresh while the lease still has most of its TTL left.
        return self._stall_limit_for(kept.ttl)

    def _stall_limit_for(self, ttl: float) -> float:
        return max(_MIN_STALL, min(self._stall_timeout, ttl / 3))

    async def _send(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> str:
        """Write refreshes when due; return when the stream breaks or stops answering."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Cleared before looking, so a lease or refresh added meanwhile wakes us.
                self._changed.clear()
                now = loop.time()
                for kept in list(self._leases.values()):
                    if kept.waiting_since is None and kept.due <= now:
                        kept.due = now + max(_MIN_INTERVAL, kept.ttl / 3)
                        kept.waiting_since = now
                        await call.write(rpc.LeaseKeepAliveRequest(ID=kept.id))
                while self._oneshot:
                    lease_id, asked = next(iter(self._oneshot.items()))
                    del self._oneshot[lease_id]
                    # The stall clock runs from the ask: a write stuck behind flow control
                    # counts as no answer.
                    self._oneshot_sent.setdefault(lease_id, asked)
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                wake = [k.due for k in self._leases.values() if k.waiting_since is None]
                if not wake:
                    await self._changed.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(wake) - loop.time())):
                        await self._changed.wait()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            return f"write failed ({exc})"

    async def _watchdog(self) -> str:
        """Return when a refresh has been waiting for an answer longer than the stall limit
        (asked for, or sent, and unanswered), whatever the sender is doing."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            deadlines: list[tuple[float, int, float]] = [
                (k.waiting_since + self._stall_limit(k), k.id, k.waiting_since)
                for k in self._leases.values()
                if k.waiting_since is not None
            ]
            oneshot_limit = self._stall_limit_for(self._oneshot_ttl)
            for waiting in (self._oneshot_sent, self._oneshot):
                if waiting:
                    lease_id, since = min(waiting.items(), key=lambda item: item[1])
                    deadlines.append((since + oneshot_limit, lease_id, since))
            # Anything asked for after this look has a deadline at least this far away.
            shortest = min((self._stall_limit(k) for k in self._leases.values()), default=inf)
            wait = min(shortest, oneshot_limit)
            if deadlines:
                due, lease_id, since = min(deadlines)
                if due <= now:
                    return f"no answer for lease {lease_id:x} in {now - since:.1f}s"
                wait = min(wait, due - now)
            await asyncio.sleep(wait)  # a deadline, not synchronisation
