"""The bench snapshot server plus a PolicyService holding N virtual keys (no control plane).

``python -m bench.policy_server --listen 127.0.0.1:PORT --model M --backend NAME=URL --keys N``

Key i's secret is ``secret(i)``; every key is of team ``bench`` and may use any model.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.snapshot_server import CLUSTER_ID, Snapshots
from corral.v1 import gateway_pb2, gateway_pb2_grpc, routing_pb2_grpc


def secret(i: int) -> str:
    return f"sk-corral-bench-{i:08d}-0123456789abcdefghijklmnopqrstuvwxyz"


def policy(count: int) -> gateway_pb2.Policy:
    out = gateway_pb2.Policy(
        version=1, cluster_id=CLUSTER_ID, created_unix_ms=int(time.time() * 1000)
    )
    out.teams.add(name="bench")
    for i in range(count):
        out.keys.add(
            id=f"ck_{i:012x}",
            team="bench",
            secret_sha256=hashlib.sha256(secret(i).encode()).digest(),
            prefix=secret(i)[:14],
        )
    return out


class Policies(gateway_pb2_grpc.PolicyServiceServicer):
    def __init__(self, count: int) -> None:
        self.response = gateway_pb2.WatchPolicyResponse(policy=policy(count))

    async def WatchPolicy(
        self,
        request: gateway_pb2.WatchPolicyRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[gateway_pb2.WatchPolicyResponse]:
        yield self.response
        await asyncio.Event().wait()  # the policy never changes here


async def serve(listen: str, backends: list[tuple[str, str]], models: list[str], keys: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    routing_pb2_grpc.add_RoutingServiceServicer_to_server(Snapshots(backends, models), server)
    gateway_pb2_grpc.add_PolicyServiceServicer_to_server(Policies(keys), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--backend", action="append", required=True, metavar="NAME=URL")
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    backends = [(b.split("=", 1)[0], b.split("=", 1)[1]) for b in args.backend]
    asyncio.run(serve(args.listen, backends, args.model, args.keys))


if __name__ == "__main__":
    main()
