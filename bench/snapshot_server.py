"""A tiny RoutingService that feeds edges a fixed set of backends (no control plane, no etcd).

``python -m bench.snapshot_server --listen 127.0.0.1:PORT --model M --backend NAME=URL ...``
``[--poll-metrics SECONDS] [--credential REF] [--fallback MODEL=TARGET ...]``

With --poll-metrics it reads each backend's vLLM-style /metrics (``vllm:num_requests_running``,
``vllm:num_requests_waiting``) and publishes the load in new snapshots, as agents would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc

from corral.v1 import routing_pb2, routing_pb2_grpc, traffic_pb2, types_pb2

CLUSTER_ID = "bench"


class Snapshots(routing_pb2_grpc.RoutingServiceServicer):
    def __init__(
        self,
        backends: list[tuple[str, str]],
        models: list[str],
        credential: str = "",
        chains: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.backends = backends
        self.models = models
        self.credential = credential  # a reference every backend names (bench/providers.py)
        self.chains = chains
        self.load: dict[str, tuple[int, int]] = {name: (0, 0) for name, _ in backends}
        self.version = 1
        self.traffic_slices = 0
        self.changed = asyncio.Condition()
        self.current = self._build()

    def _build(self) -> types_pb2.Snapshot:
        snap = types_pb2.Snapshot(
            version=self.version, cluster_id=CLUSTER_ID, created_unix_ms=int(time.time() * 1000)
        )
        for name, url in sorted(self.backends):
            running, waiting = self.load[name]
            snap.backends.append(
                types_pb2.Backend(
                    spec=types_pb2.BackendSpec(
                        name=name,
                        url=url,
                        type=types_pb2.BACKEND_TYPE_VLLM,
                        weight=1.0,
                        credential=self.credential,
                    ),
                    status=types_pb2.BackendStatus(
                        health=types_pb2.HEALTH_STATE_HEALTHY,
                        models=[types_pb2.ModelInfo(id=m, loaded=True) for m in self.models],
                        load=types_pb2.BackendLoad(running=running, waiting=waiting),
                        capabilities=[types_pb2.CAPABILITY_COMPLETIONS],
                    ),
                    agent_id=f"bench-{name}",
                )
            )
        for model, target in self.chains:
            snap.fallbacks.add(model=model, targets=[target])
        return snap

    async def publish_load(self, load: dict[str, tuple[int, int]]) -> None:
        if load == self.load:
            return
        async with self.changed:
            self.load = dict(load)
            self.version += 1
            self.current = self._build()
            self.changed.notify_all()

    async def WatchSnapshots(
        self,
        request: routing_pb2.WatchSnapshotsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[routing_pb2.WatchSnapshotsResponse]:
        sent = [0]
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: self.current.version > sent[0])
                snap = self.current
            sent[0] = snap.version
            yield routing_pb2.WatchSnapshotsResponse(snapshot=snap)

    async def ReportTraffic(
        self,
        request: traffic_pb2.ReportTrafficRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> traffic_pb2.ReportTrafficResponse:
        """Acknowledge an edge's traffic slices (counted, not stored)."""
        self.traffic_slices += len(request.slices)
        return traffic_pb2.ReportTrafficResponse(
            acked_seq=max((s.seq for s in request.slices), default=0)
        )


async def _poll(snaps: Snapshots, interval: float) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            load: dict[str, tuple[int, int]] = {}
            for name, url in snaps.backends:
                running = waiting = 0
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(
                        url + "/metrics", timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        for line in (await resp.text()).splitlines():
                            if line.startswith("vllm:num_requests_running"):
                                running = int(float(line.split()[-1]))
                            elif line.startswith("vllm:num_requests_waiting"):
                                waiting = int(float(line.split()[-1]))
                load[name] = (running, waiting)
            await snaps.publish_load(load)
            await asyncio.sleep(interval)


async def serve(
    listen: str,
    backends: list[tuple[str, str]],
    models: list[str],
    poll: float,
    credential: str = "",
    chains: tuple[tuple[str, str], ...] = (),
) -> None:
    snaps = Snapshots(backends, models, credential, chains)
    server = grpc.aio.server()
    routing_pb2_grpc.add_RoutingServiceServicer_to_server(snaps, server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    poller = asyncio.create_task(_poll(snaps, poll)) if poll > 0 else None
    try:
        await stop.wait()
    finally:
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--backend", action="append", required=True, metavar="NAME=URL")
    parser.add_argument("--poll-metrics", type=float, default=0.0)
    parser.add_argument("--credential", default="", help="a reference every backend names")
    parser.add_argument("--fallback", action="append", default=[], metavar="MODEL=TARGET")
    args = parser.parse_args()
    backends = [(b.split("=", 1)[0], b.split("=", 1)[1]) for b in args.backend]
    chains = tuple((f.split("=", 1)[0], f.split("=", 1)[1]) for f in args.fallback)
    asyncio.run(
        serve(args.listen, backends, args.model, args.poll_metrics, args.credential, chains)
    )


if __name__ == "__main__":
    main()
