"""`corral status`'s traffic tables: the cluster-wide view from AdminService.GetTraffic."""

from __future__ import annotations

import grpc

from corral.v1 import traffic_pb2

WINDOWS = {
    "1m": traffic_pb2.TRAFFIC_WINDOW_1M,
    "5m": traffic_pb2.TRAFFIC_WINDOW_5M,
    "1h": traffic_pb2.TRAFFIC_WINDOW_1H,
}
GROUPS = (
    ("BACKEND", traffic_pb2.TRAFFIC_GROUP_BACKEND),
    ("MODEL", traffic_pb2.TRAFFIC_GROUP_MODEL),
)
METHOD = "/corral.v1.AdminService/GetTraffic"


def fetch_traffic(
    channel: grpc.Channel,
    window: str,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
) -> tuple[traffic_pb2.GetTrafficResponse, ...] | None:
    """Traffic by backend and by model; None from a control plane without GetTraffic."""
    call = channel.unary_unary(
        METHOD,
        request_serializer=traffic_pb2.GetTrafficRequest.SerializeToString,
        response_deserializer=traffic_pb2.GetTrafficResponse.FromString,
    )
    out = []
    for _, group in GROUPS:
        request = traffic_pb2.GetTrafficRequest(window=WINDOWS[window], group_by=group)
        try:
            out.append(call(request, timeout=timeout, metadata=metadata))
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
    return tuple(out)


def _ms(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.1f}s"


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def rows(response: traffic_pb2.GetTrafficResponse) -> list[tuple[str, ...]]:
    return [
        (
            row.key,
            f"{row.share * 100:.1f}%",
            _rate(row.requests_per_second),
            f"{row.error_rate * 100:.1f}%",
            f"{_ms(row.latency_p50_seconds)}/{_ms(row.latency_p95_seconds)}/"
            f"{_ms(row.latency_p99_seconds)}",
            f"{_ms(row.ttft_p50_seconds)}/{_ms(row.ttft_p95_seconds)}/{_ms(row.ttft_p99_seconds)}",
            str(row.requests),
        )
        for row in response.rows
        if row.requests
    ]


HEADER = ("{}", "SHARE", "REQ/S", "ERRORS", "LATENCY p50/p95/p99", "TTFT p50/p95/p99", "REQUESTS")
