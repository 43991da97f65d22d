"""GetTraffic with the real grpcurl binary, as docs/OBSERVABILITY.md shows it."""

from __future__ import annotations

import time

from corral.config import Secret
from corral.v1 import traffic_pb2
from tests.controlplane import harness as h
from tests.support.grpcurl import grpcurl
from tests.support.net import eventually

ADMIN = "admin-secret"


async def test_get_traffic_through_grpcurl() -> None:
    """An edge's report (sent the way edges send it) comes back from GetTraffic as JSON."""
    async with h.running(h.config(admin_token=Secret(ADMIN))) as cp:
        now = int(time.time() * 1000)
        report = traffic_pb2.ReportTrafficRequest(edge_id="edge-1", incarnation="x")
        piece = report.slices.add(seq=1, start_unix_ms=now - 5000, end_unix_ms=now)
        cell = piece.cells.add(backend="gpu-a", model="llama", team="default", requests=40)
        cell.statuses[200] = 38
        cell.statuses[503] = 2
        cell.latency.extend([0] * 20 + [40])
        request = report.SerializeToString()
        from grpc import aio

        async with aio.insecure_channel(cp) as channel:
            call = channel.unary_unary(
                "/corral.v1.RoutingService/ReportTraffic",
                request_serializer=lambda b: b,
                response_deserializer=traffic_pb2.ReportTrafficResponse.FromString,
            )
            answer = await call(request, timeout=5)
            assert answer.acked_seq == 1

        async def traffic() -> dict[str, object] | None:
            result = await grpcurl(
                "-plaintext", "-H", f"authorization: Bearer {ADMIN}",
                "-d", '{"window": "TRAFFIC_WINDOW_1M", "group_by": "TRAFFIC_GROUP_MODEL"}',
                cp, "corral.v1.AdminService/GetTraffic",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            doc: dict[str, object] = result.json()
            return doc if doc.get("rows") else None

        doc = await eventually(traffic)
        [row] = doc["rows"]
        assert row["key"] == "llama" and row["requests"] == "40"
        assert row["errors"] == {"5xx": "2"} and abs(row["error_rate"] - 0.05) < 1e-9
        assert row["share"] == 1
        # Without the admin token: refused.
        refused = await grpcurl("-plaintext", cp, "corral.v1.AdminService/GetTraffic")
        assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
