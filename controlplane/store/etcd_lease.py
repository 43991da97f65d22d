"""Keeping etcd leases alive over ONE long-lived LeaseKeepAlive stream per store.

A new stream per heartbeat burns etcd CPU; one bidirectional stream carries every kept lease's
refresh about every ttl/3. When the stream breaks (member down, leader lost), a new one is
opened on the next endpoint and every lease is refreshed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from controlplane.store.etcd_conn import REQUIRE_LEADER, Backoff, EndpointPool, cancel_and_wait

log = logging.getLogger(__name__)

# Never refresh more often than this, whatever the TTL.
_MIN_INTERVAL = 0.1


@dataclass(eq=False)
class _Kept:
    id: int
    ttl: int
    due: float  # loop time of the next refresh


class LeaseKeeper:
    """Owns the keepalive task; `keep`/`release` say which leases it refreshes."""

    def __init__(self, pool: EndpointPool, *, connect_timeout: float) -> None:
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._leases: dict[int, _Kept] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Refreshes answered by etcd since start (tests and metrics watch it move).
        self.refreshes = 0
        self.streams_opened = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="etcd-lease-keepalive")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)

    def kept(self) -> list[int]:
        return list(self._leases)

    def keep(self, lease_id: int, ttl: int, *, refresh_now: bool) -> None:
        now = asyncio.get_running_loop().time()
        due = now if refresh_now else now + max(_MIN_INTERVAL, ttl / 3)
        self._leases[lease_id] = _Kept(lease_id, ttl, due)
        self._changed.set()

    def release(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            while not self._leases:
                self._changed.clear()
                await self._changed.wait()
            index = self._pool.current
            stubs = await self._pool.ready(index, self._connect_timeout)
            if stubs is None:
                self._pool.rotate(index)
                await asyncio.sleep(backoff.next_delay())
                continue
            call = stubs.lease.LeaseKeepAlive(metadata=REQUIRE_LEADER)
            self.streams_opened += 1
            now = asyncio.get_running_loop().time()
            for kept in self._leases.values():
                kept.due = now  # TTLs may have reset on another member: refresh at once
            sender = asyncio.create_task(self._send(call), name="etcd-lease-keepalive-send")
            try:
                async for response in call:
                    backoff.reset()
                    self._answered(response)
                log.warning("etcd keepalive stream on %s ended", self._pool.endpoints[index].url)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "etcd keepalive stream on %s broke: %s %s",
                    self._pool.endpoints[index].url,
                    exc.code().name,
                    exc.details(),
                )
            finally:
                call.cancel()
                await cancel_and_wait(sender)
            self._pool.rotate(index)
            await asyncio.sleep(backoff.next_delay())

    def _answered(self, response: rpc.LeaseKeepAliveResponse) -> None:
        kept = self._leases.get(response.ID)
        if kept is None:
            return
        if response.TTL <= 0:
            # etcd no longer knows the lease: it expired or was revoked elsewhere.
            log.warning("etcd lease %x is gone; no longer keeping it", response.ID)
            del self._leases[response.ID]
            return
        self.refreshes += 1
        kept.ttl = int(response.TTL)

    async def _send(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                for kept in list(self._leases.values()):
                    if kept.due <= now:
                        kept.due = now + max(_MIN_INTERVAL, kept.ttl / 3)
                        await call.write(rpc.LeaseKeepAliveRequest(ID=kept.id))
                next_due = min((k.due for k in self._leases.values()), default=None)
                self._changed.clear()
                if next_due is None:
                    await self._changed.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, next_due - loop.time())):
                            await self._changed.wait()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The stream broke; the reader sees it too and opens a new one.
            return
