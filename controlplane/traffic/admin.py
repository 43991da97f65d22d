"""AdminService.GetTraffic: the cluster-wide traffic view of this replica."""

from __future__ import annotations

from controlplane.errors import InvalidArgumentError
from controlplane.replica import Parts
from corral.v1 import traffic_pb2


async def get_traffic(
    request: traffic_pb2.GetTrafficRequest, parts: Parts
) -> traffic_pb2.GetTrafficResponse:
    if request.window not in traffic_pb2.TrafficWindow.values():
        raise InvalidArgumentError(f"unknown traffic window {request.window}")
    if request.group_by not in traffic_pb2.TrafficGroup.values():
        raise InvalidArgumentError(f"unknown traffic grouping {request.group_by}")
    return parts.traffic.query(request)
