"""corral.v1.PolicyService: the gateway policy streamed to edges (edge token, like routing).

Each subscriber gets the view's policy when it joins, then again whenever the view's version
moves on: latest only, serialized once per version, sent as bytes. Nothing is paced: the
policy changes only when an operator changes it. A replica that cannot catch up with an edge,
or has lost its store (Replica.check_streaming), ends the stream with UNAVAILABLE: the edge
moves to another, rather than miss a revocation here.
"""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.errors import ControlPlaneError, NotSyncedError
from controlplane.replica import Replica
from controlplane.validation import MAX_AGENT_ID, check_text
from controlplane.versions import Stream
from corral.v1 import gateway_pb2

SERVICE = "corral.v1.PolicyService"

Context = grpc.aio.ServicerContext[gateway_pb2.WatchPolicyRequest, bytes]


def _identity(payload: bytes) -> bytes:
    return payload


class PolicyService:
    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "WatchPolicy": grpc.unary_stream_rpc_method_handler(
                    self.watch_policy,
                    request_deserializer=gateway_pb2.WatchPolicyRequest.FromString,
                    response_serializer=_identity,
                )
            },
        )

    async def watch_policy(self, request: gateway_pb2.WatchPolicyRequest, context: Context) -> None:
        replica = self._replica
        stream = Stream(request.cluster_id, request.last_applied_version)
        try:
            parts = replica.parts()
            view = parts.policy
            if view is None or view.listings == 0:
                raise NotSyncedError("this replica has not read the policy yet; retry")
            replica.check_streaming(holding=request.last_applied_version > 0)
            check_text(request.edge_id, "edge_id", MAX_AGENT_ID)
            check_text(request.cluster_id, "cluster_id", MAX_AGENT_ID)
            await stream.catch_up(view, "policy")
        except ControlPlaneError as exc:
            replica.metrics.rejections.labels(exc.reason).inc()
            await context.abort(exc.code, str(exc))
            return
        try:
            while True:
                replica.check_streaming(
                    holding=request.last_applied_version > 0 or stream.version > 0
                )
                changed = view.changed()
                built = view.current()
                if stream.due(built):
                    await context.write(built.payload)
                    stream.sent(built)
                    continue  # the view may have moved while we wrote
                await changed.wait()
        except ControlPlaneError as exc:
            await context.abort(exc.code, str(exc))
