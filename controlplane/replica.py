"""What one replica serves from: its store, its routing view, its agent sessions, its edges.

The gRPC server starts before the store is reachable (so health answers NOT_SERVING);
`Replica.parts()` refuses calls until the store is up and listed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from controlplane.agents import AgentHub
from controlplane.errors import NotSyncedError, ShuttingDownError
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics
from controlplane.state import RoutingView
from controlplane.store.base import LeaseNotFoundError, Store, StoreError
from corral.v1 import admin_pb2

log = logging.getLogger(__name__)


class EdgeBook:
    """Presence records of the edges subscribed here, leased to this replica.

    Presence is informational (ListEdges), so failures are logged and never end a stream.
    The lease is the replica's own: if the replica dies, its edges' records lapse with it.
    """

    def __init__(self, store: Store, layout: KeyLayout, ttl: int, metrics: Metrics) -> None:
        self._store = store
        self._layout = layout
        self._ttl = ttl
        self._metrics = metrics
        self._lease = 0
        self._lease_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _current_lease(self, *, renew: bool = False) -> int:
        async with self._lease_lock:
            if renew:
                self._lease = 0
            if not self._lease:
                self._lease = await self._store.grant_lease(self._ttl)
            return self._lease

    async def put(self, key: bytes, info: admin_pb2.EdgeInfo) -> None:
        value = info.SerializeToString()
        try:
            lease = await self._current_lease()
            try:
                await self._store.put(key, value, lease=lease)
            except LeaseNotFoundError:
                # The replica lease lapsed (a store outage longer than its TTL): a new one.
                await self._store.put(key, value, lease=await self._current_lease(renew=True))
            self._metrics.store_writes.labels("presence").inc()
        except StoreError as exc:
            log.warning("could not record edge presence: %s", exc)

    def forget(self, key: bytes) -> None:
        """Delete a record without making the ending stream wait for the store."""
        task = asyncio.create_task(self._delete(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete(self, key: bytes) -> None:
        try:
            await self._store.delete(key)
            self._metrics.store_writes.labels("presence").inc()
        except StoreError as exc:
            log.info("could not delete edge presence (it lapses with the lease): %s", exc)

    async def close(self) -> None:
        """Finish pending deletes, then end the replica lease (its records go with it)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lease:
            with contextlib.suppress(StoreError):
                await self._store.revoke_lease(self._lease)
            self._lease = 0


@dataclass
class Parts:
    store: Store
    view: RoutingView
    hub: AgentHub
    edges: EdgeBook


class Replica:
    def __init__(self, replica_id: str, layout: KeyLayout, metrics: Metrics) -> None:
        self.replica_id = replica_id
        self.layout = layout
        self.metrics = metrics
        self._parts: Parts | None = None
        self.stopping = asyncio.Event()

    def install(self, parts: Parts) -> None:
        self._parts = parts

    def installed(self) -> Parts | None:
        return self._parts

    def uninstall(self) -> None:
        self._parts = None

    def parts(self) -> Parts:
        if self.stopping.is_set():
            raise ShuttingDownError("this control-plane replica is shutting down; use another")
        parts = self._parts
        if parts is None or parts.view.listings == 0:
            raise NotSyncedError(
                "this control-plane replica has not synced with its store yet; "
                "retry, or use another replica"
            )
        return parts
