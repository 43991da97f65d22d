"""corral.v1.RoutingService: routing snapshots streamed to edges.

Each subscriber has its own coroutine that sends the view's newest snapshot when it joins,
then the view's published snapshot whenever that moves on (routing changes at once, load-only
changes paced: see RoutingView): latest-only, so a slow edge skips versions and never holds
up the others. Snapshots are serialized once per version and sent as bytes to every
subscriber. A replica that cannot catch up with an edge, or has lost its store
(Replica.check_streaming), ends the stream with UNAVAILABLE: the edge moves to another.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import grpc

from controlplane.errors import ControlPlaneError, translate_store_error
from controlplane.replica import Replica
from controlplane.store.base import StoreError
from controlplane.traffic.intake import check_report
from controlplane.validation import MAX_AGENT_ID, check_text
from controlplane.versions import Stream
from corral.v1 import admin_pb2, routing_pb2, traffic_pb2

log = logging.getLogger(__name__)

SERVICE = "corral.v1.RoutingService"

Context = grpc.aio.ServicerContext[routing_pb2.WatchSnapshotsRequest, bytes]


def _identity(payload: bytes) -> bytes:
    return payload


class RoutingService:
    def __init__(self, replica: Replica, *, presence_interval: float) -> None:
        self._replica = replica
        # An edge's presence record (its applied version) is rewritten at most this often.
        self._presence_interval = presence_interval
        self._streams = itertools.count(1)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "WatchSnapshots": grpc.unary_stream_rpc_method_handler(
                    self.watch_snapshots,
                    request_deserializer=routing_pb2.WatchSnapshotsRequest.FromString,
                    response_serializer=_identity,
                ),
                "ReportTraffic": grpc.unary_unary_rpc_method_handler(
                    self.report_traffic,
                    request_deserializer=traffic_pb2.ReportTrafficRequest.FromString,
                    response_serializer=traffic_pb2.ReportTrafficResponse.SerializeToString,
                ),
            },
        )

    async def report_traffic(
        self,
        request: traffic_pb2.ReportTrafficRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> traffic_pb2.ReportTrafficResponse:
        """Store an edge's traffic slices; acknowledge what the store now holds."""
        replica = self._replica
        try:
            parts = replica.parts()
            acked = check_report(request)
            await parts.traffic_book.report(request)
        except ControlPlaneError as exc:
            replica.metrics.rejections.labels(exc.reason).inc()
            await context.abort(exc.code, str(exc))
        except StoreError as exc:
            error = translate_store_error(exc, "traffic report")
            await context.abort(error.code, str(error))
        replica.metrics.traffic_reports.inc()
        return traffic_pb2.ReportTrafficResponse(acked_seq=acked)

    async def watch_snapshots(
        self, request: routing_pb2.WatchSnapshotsRequest, context: Context
    ) -> None:
        replica = self._replica
        wanted = request.last_applied_version
        stream = Stream(request.cluster_id, wanted)
        try:
            parts = replica.parts()
            replica.check_streaming(holding=wanted > 0)
            check_text(request.edge_id, "edge_id", MAX_AGENT_ID)
            check_text(request.listen_address, "listen_address", MAX_AGENT_ID)
            check_text(request.cluster_id, "cluster_id", MAX_AGENT_ID)
            await stream.catch_up(parts.view, "snapshot")
        except ControlPlaneError as exc:
            replica.metrics.rejections.labels(exc.reason).inc()
            await context.abort(exc.code, str(exc))
            return
        view = parts.view
        peer = context.peer()
        edge_id = request.edge_id or peer
        key = replica.layout.edge(edge_id, f"{replica.replica_id}#{next(self._streams)}")
        info = admin_pb2.EdgeInfo(
            edge_id=edge_id,
            listen_address=request.listen_address,
            controlplane_id=replica.replica_id,
            peer=peer,
            applied_version=wanted,
            connected_unix_ms=int(time.time() * 1000),
        )
        parts.edges.record(key, info)
        replica.metrics.edges_connected.inc()
        recorded_version = wanted
        next_record = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                replica.check_streaming(holding=wanted > 0 or stream.version > 0)
                changed = view.version_event()
                built = view.published() if stream.cluster_id else view.current()
                if stream.due(built):
                    await context.write(built.payload)
                    replica.metrics.snapshots_sent.inc()
                    stream.sent(built)
                    continue  # the view may have moved while we wrote
                timeout = None
                if stream.version != recorded_version:
                    wait = next_record - loop.time()
                    if wait <= 0:
                        info.applied_version = stream.version
                        parts.edges.record(key, info)
                        recorded_version = stream.version
                        next_record = loop.time() + self._presence_interval
                    else:
                        timeout = wait
                try:
                    async with asyncio.timeout(timeout):
                        await changed.wait()
                except TimeoutError:
                    pass
        except ControlPlaneError as exc:
            await context.abort(exc.code, str(exc))
        finally:
            replica.metrics.edges_connected.dec()
            parts.edges.forget(key)
