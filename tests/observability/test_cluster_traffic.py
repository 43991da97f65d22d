"""The cluster-wide traffic view: 3 edges report, 2 control-plane replicas on etcd agree."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import grpc
from grpc import aio

from corral import traffic as hist
from corral.config import EdgeObservabilityConfig
from corral.status import fetch, render_text
from corral.v1 import traffic_pb2
from tests.controlplane.harness import etcd_config, running
from tests.edge.conftest import StartEdge, running_agents
from tests.fakes import FakeServer, running_fakes
from tests.observability.waits import serving
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually

MODEL = "m"
SLOW_SECONDS = 0.3
REQUESTS = 180


async def get_traffic(
    address: str, window: int = traffic_pb2.TRAFFIC_WINDOW_5M, group: int = 0
) -> traffic_pb2.GetTrafficResponse:
    async with aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/corral.v1.AdminService/GetTraffic",
            request_serializer=traffic_pb2.GetTrafficRequest.SerializeToString,
            response_deserializer=traffic_pb2.GetTrafficResponse.FromString,
        )
        response: traffic_pb2.GetTrafficResponse = await call(
            traffic_pb2.GetTrafficRequest(window=window, group_by=group), timeout=5
        )
        return response


async def test_two_replicas_report_the_same_shares(
    etcd: EtcdCluster, start_edge: StartEdge
) -> None:
    """Shares per backend and the slow backend's p95 match what clients saw, on each replica."""
    endpoints = etcd.endpoints
    async with (
        running(etcd_config(endpoints, replica_id="cp-1")) as cp1,
        running(etcd_config(endpoints, replica_id="cp-2")) as cp2,
        running_fakes(
            FakeServer("vllm", [MODEL], "fast-a"),
            FakeServer("vllm", [MODEL], "fast-b"),
            FakeServer("vllm", [MODEL], "slow-c"),
        ) as fakes,
        running_agents(cp1, fakes),
    ):
        fakes[2].response_delay = SLOW_SECONDS
        quick = EdgeObservabilityConfig(traffic_interval_seconds=0.3)
        edges = [
            await start_edge(
                None,
                controlplane=(cp1, cp2),
                edge_id=f"edge-{i}",
                balancing="least-connections",
                observability=quick,
            )
            for i in range(3)
        ]
        async with aiohttp.ClientSession() as http:

            async def routable() -> bool:
                return all([await serving(e, MODEL, 3) for e in edges])

            await eventually(routable, within=30)
            served: Counter[str] = Counter()
            slow_latencies: list[float] = []
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(REQUESTS):
                queue.put_nowait(i)

            async def client(url: str) -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    started = time.monotonic()
                    async with http.post(
                        f"{url}/v1/chat/completions",
                        json={"model": MODEL, "messages": [{"role": "user", "content": str(i)}]},
                    ) as resp:
                        await resp.read()
                        assert resp.status == 200
                        backend = resp.headers["x-corral-backend"]
                    served[backend] += 1
                    if backend == "slow-c":
                        slow_latencies.append(time.monotonic() - started)

            await asyncio.gather(*(client(e.url) for e in edges for _ in range(4)))
        assert sum(served.values()) == REQUESTS
        assert served["slow-c"] > 5, served
        slow_latencies.sort()
        true_p95 = slow_latencies[int(0.95 * (len(slow_latencies) - 1))]

        for address in (cp1, cp2):

            async def complete(address: str = address) -> traffic_pb2.GetTrafficResponse | None:
                got = await get_traffic(address)
                return got if got.requests >= REQUESTS else None

            view = await eventually(complete, within=30)
            assert view.requests == REQUESTS
            assert sorted(view.edges) == ["edge-0", "edge-1", "edge-2"]
            rows = {row.key: row for row in view.rows}
            for backend, count in served.items():
                assert abs(rows[backend].share - count / REQUESTS) <= 0.02, (address, rows)
            slow = rows["slow-c"]
            assert slow.error_rate == 0.0
            reported = hist.bucket_of(slow.latency_p95_seconds)
            assert abs(reported - hist.bucket_of(true_p95)) <= 1, (slow, true_p95)
            assert hist.bucket_of(rows["fast-a"].latency_p95_seconds) < reported - 1
            by_model = await get_traffic(address, group=traffic_pb2.TRAFFIC_GROUP_MODEL)
            assert [(r.key, r.requests) for r in by_model.rows] == [(MODEL, REQUESTS)]
            by_edge = await get_traffic(address, group=traffic_pb2.TRAFFIC_GROUP_EDGE)
            assert sum(r.requests for r in by_edge.rows) == REQUESTS
            assert len(by_edge.rows) == 3

        # `corral status` shows the same shares in its traffic table.
        status = await asyncio.to_thread(fetch, cp2, None, window="1m")
        text = render_text(status)
        section = text.split("TRAFFIC BY BACKEND", 1)[1].split("TRAFFIC BY MODEL", 1)[0]
        for backend, count in served.items():
            line = next(x for x in section.splitlines() if x.startswith(backend + " "))
            share = float(line.split()[1].rstrip("%"))
            assert abs(share - 100 * count / REQUESTS) <= 2.0, line
        model_section = text.split("TRAFFIC BY MODEL", 1)[1]
        assert f"(last 1m: {REQUESTS} requests" in model_section.splitlines()[0]
        assert any(x.split()[:2] == [MODEL, "100.0%"] for x in model_section.splitlines())


async def test_bad_windows_are_refused(etcd: EtcdCluster) -> None:
    """An unknown window is INVALID_ARGUMENT, not an empty answer."""
    async with running(etcd_config(etcd.endpoints)) as cp:
        try:
            await get_traffic(cp, window=42)
        except aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError("window 42 was accepted")
