"""Writing edges' traffic reports into the store (RoutingService.ReportTraffic).

Each report is merged into one record per (edge, bucket) at each resolution with a
read-modify-write guarded by the record's mod revision, so two replicas writing the same
record (an edge that moved) never lose a count; the slice's seq makes a resent slice count
once. The write happens before the edge is acknowledged, so an edge keeps what the store
does not hold yet. Records are leased per time bucket, not to the edge or the replica:
history outlives both for the window it serves, then etcd deletes it by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from controlplane.errors import ControlPlaneError
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics
from controlplane.store.base import LeaseNotFoundError, Store
from controlplane.traffic.records import RESOLUTIONS, Resolution, merge_slice
from corral.v1 import traffic_pb2

log = logging.getLogger(__name__)

# A lease is shared by every record written in the same period of this length.
LEASE_PERIOD_SECONDS = 60
CAS_ATTEMPTS = 8


class TrafficBook:
    def __init__(
        self,
        store: Store,
        layout: KeyLayout,
        metrics: Metrics,
        known: Callable[[bytes], tuple[bytes, int] | None] | None = None,
    ) -> None:
        self._store = store
        # The watched copy of a record (value, mod revision), tried before reading the store.
        self._known = known
        self._layout = layout
        self._metrics = metrics
        # (resolution name, period) -> lease id
        self._leases: dict[tuple[str, int], int] = {}

    async def report(self, request: traffic_pb2.ReportTrafficRequest) -> None:
        """Store the request's slices (merged into their records)."""
        groups: dict[bytes, tuple[Resolution, list[traffic_pb2.TrafficSlice]]] = {}
        for piece in request.slices:
            for resolution in RESOLUTIONS:
                start = resolution.bucket(piece.start_unix_ms)
                key = self._layout.traffic_record(resolution.name, request.edge_id, start)
                groups.setdefault(key, (resolution, []))[1].append(piece)
        for key, (resolution, pieces) in groups.items():
            await self._merge(key, resolution, request, pieces)

    async def _merge(
        self,
        key: bytes,
        resolution: Resolution,
        request: traffic_pb2.ReportTrafficRequest,
        pieces: list[traffic_pb2.TrafficSlice],
    ) -> None:
        for attempt in range(CAS_ATTEMPTS):
            if attempt == 0 and self._known is not None:
                seen = self._known(key)  # usually current: this edge's last write was 5 s ago
            else:
                kv = await self._store.get(key)
                seen = (kv.value, kv.mod_revision) if kv is not None else None
            record = traffic_pb2.TrafficRecord()
            if seen is not None:
                record.ParseFromString(seen[0])
            else:
                record.edge_id = request.edge_id
            record.listen_address = request.listen_address
            changed = False
            for piece in pieces:
                changed |= merge_slice(record, request.incarnation, piece)
            if not changed:
                return
            record.updated_unix_ms = int(time.time() * 1000)
            revision = seen[1] if seen is not None else 0
            lease = await self._lease(resolution)
            try:
                written = await self._store.put_if(
                    key, record.SerializeToString(), lease=lease, expect_mod_revision=revision
                )
            except LeaseNotFoundError:
                self._leases.clear()
                continue
            self._metrics.store_writes.labels("traffic").inc()
            if written:
                return
        log.warning("traffic record %r kept changing under us; the report is retried", key)
        raise ContendedError("traffic records are being rewritten too fast; report again later")

    async def _lease(self, resolution: Resolution) -> int:
        period = int(time.time()) // LEASE_PERIOD_SECONDS
        key = (resolution.name, period)
        lease = self._leases.get(key)
        if lease is None:
            for old in [k for k in self._leases if k[0] == resolution.name]:
                del self._leases[old]
            # Outlives the last write of the period by the resolution's TTL.
            ttl = resolution.ttl_seconds + LEASE_PERIOD_SECONDS
            lease = self._leases[key] = await self._store.grant_lease(ttl, keep=False)
        return lease


class ContendedError(ControlPlaneError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "contended"
