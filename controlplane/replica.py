"""What one replica serves from: its store, its routing view, its agent sessions, its edges.

The gRPC server starts before the store is reachable (so health answers NOT_SERVING);
`Replica.parts()` refuses calls until the store is up and listed once. A replica that has
been out of sync with its store for longer than a short grace ends its edges' streams and
refuses new ones (`check_streaming`), so edges move to a replica that still has the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controlplane.agents import AgentHub
from controlplane.errors import NotSyncedError, ShuttingDownError
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics
from controlplane.state import RoutingView
from controlplane.store.base import LeaseNotFoundError, Store, StoreError
from controlplane.traffic.book import TrafficBook
from controlplane.traffic.view import TrafficView
from corral.backoff import Backoff
from corral.v1 import admin_pb2

if TYPE_CHECKING:
    from controlplane.gateway.policy_view import PolicyView

log = logging.getLogger(__name__)


class EdgeBook:
    """Presence records of the edges subscribed here, leased to this replica.

    Presence is informational (ListEdges), so it never delays a snapshot: records are
    queued (latest per key wins) and written by one owned task; failures are logged and
    retried, never passed to a stream. The lease is the replica's own: if the replica dies,
    its edges' records lapse with it.
    """

    def __init__(self, store: Store, layout: KeyLayout, ttl: int, metrics: Metrics) -> None:
        self._store = store
        self._layout = layout
        self._ttl = ttl
        self._metrics = metrics
        self._lease = 0
        # key -> serialized EdgeInfo to write, or None to delete.
        self._pending: dict[bytes, bytes | None] = {}
        self._wake = asyncio.Event()

    def record(self, key: bytes, info: admin_pb2.EdgeInfo) -> None:
        self._pending[key] = info.SerializeToString()
        self._wake.set()

    def announce(self, key: bytes, value: bytes) -> None:
        """Write another presence record under the same replica lease (the replica's own)."""
        self._pending[key] = value
        self._wake.set()

    def forget(self, key: bytes) -> None:
        self._pending[key] = None
        self._wake.set()

    async def run(self) -> None:
        """Write queued records until cancelled."""
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
                backoff.reset()
            except StoreError as exc:
                delay = backoff.next()
                log.warning("could not record edge presence (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                self._wake.set()

    async def _flush(self) -> None:
        while self._pending:
            key, value = next(iter(self._pending.items()))
            if value is None:
                await self._store.delete(key)
            else:
                await self._put(key, value)
            self._metrics.store_writes.labels("presence").inc()
            # Drop the entry unless a newer record for the key came in meanwhile.
            if self._pending.get(key, b"") is value:
                del self._pending[key]

    async def _put(self, key: bytes, value: bytes) -> None:
        if not self._lease:
            self._lease = await self._store.grant_lease(self._ttl)
        try:
            await self._store.put(key, value, lease=self._lease)
        except LeaseNotFoundError:
            # The replica lease lapsed (a store outage longer than its TTL): a new one.
            self._lease = await self._store.grant_lease(self._ttl)
            await self._store.put(key, value, lease=self._lease)

    async def close(self) -> None:
        """Write what is queued (deletes of ended streams), then end the replica lease."""
        with contextlib.suppress(StoreError):
            await self._flush()
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
    traffic_book: TrafficBook
    traffic: TrafficView
    # The gateway policy (teams, keys, prices) this replica streams to edges.
    policy: PolicyView | None = None


class Replica:
    def __init__(
        self,
        replica_id: str,
        layout: KeyLayout,
        metrics: Metrics,
        *,
        store_lost_grace: float,
    ) -> None:
        self.replica_id = replica_id
        self.layout = layout
        self.metrics = metrics
        self._parts: Parts | None = None
        self.stopping = asyncio.Event()
        # How long the replica out of sync with its store streams its last state to edges.
        self._store_lost_grace = store_lost_grace
        # Out of sync with the store for longer than the grace: no streams to edges.
        self.store_lost = False
        self._losing: asyncio.TimerHandle | None = None

    def install(self, parts: Parts) -> None:
        self._parts = parts

    def installed(self) -> Parts | None:
        return self._parts

    def uninstall(self) -> None:
        self._parts = None
        if self._losing is not None:
            self._losing.cancel()
            self._losing = None

    def set_store_synced(self, synced: bool) -> None:
        """The routing view's sync with the store changed (listed and watching, and the
        store answers its probe). Out of sync for the grace, the store counts as lost."""
        if synced:
            if self._losing is not None:
                self._losing.cancel()
                self._losing = None
            if self.store_lost:
                self.store_lost = False
                log.info("store synced again: streaming to edges again")
            return
        if self._losing is None and not self.store_lost:
            loop = asyncio.get_running_loop()
            self._losing = loop.call_later(self._store_lost_grace, self._lose_store)

    def _lose_store(self) -> None:
        self._losing = None
        self.store_lost = True
        log.warning(
            "out of sync with the store for %gs: ending the edges' streams (they move to "
            "another replica) and refusing new ones until it is back",
            self._store_lost_grace,
        )
        parts = self._parts
        if parts is not None:
            parts.view.wake()
            if parts.policy is not None:
                parts.policy.wake()

    def check_streaming(self, holding: bool = True) -> None:
        """Raise unless this replica may stream state to edges: it is not shutting down and
        has not lost its store (a replica that cannot hear of changes, a revoked key among
        them, must not keep edges that another replica could serve). An edge `holding`
        nothing yet still gets its last state first (static stability: a new edge starts
        with what every replica may have lost touch with), and is then sent on."""
        if self.stopping.is_set():
            raise ShuttingDownError("this control-plane replica is shutting down; use another")
        if self.store_lost and holding:
            raise NotSyncedError(
                "this control-plane replica has lost its store (out of sync for over "
                f"{self._store_lost_grace:g}s); use another replica"
            )

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
