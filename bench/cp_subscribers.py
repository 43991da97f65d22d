"""Many snapshot subscribers in one process, for the control-plane benchmark.

``python -m bench.cp_subscribers --target HOST:PORT --count 50 --expect 1000 --watch NAME,...``

Each subscriber holds one RoutingService/WatchSnapshots stream, as an edge does. It prints
JSON lines: ``{"ready": true}`` once every subscriber holds a snapshot with at least --expect
routable backends; ``{"registered": N, "t": NS}`` whenever the number of backends in subscriber 0's
snapshot changes; for every watched backend, ``{"gone": NAME, "sub": I, "t": NS}`` the
first time subscriber I holds a snapshot where that backend is absent or not HEALTHY (t is
CLOCK_MONOTONIC, comparable with the agents' clock on this machine); finally, on SIGTERM,
``{"snapshots": N, "bytes": B, "age_p50_ms": A, "age_p99_ms": A}`` (a snapshot's age on
arrival: from its created_unix_ms to the moment this process read it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import grpc
import orjson

from corral.v1 import routing_pb2, routing_pb2_grpc, types_pb2

HEALTHY = types_pb2.HEALTH_STATE_HEALTHY


def emit(obj: dict[str, object]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.flush()


async def subscriber(
    index: int,
    channel: grpc.aio.Channel,
    expect: int,
    watch: frozenset[str],
    ready: list[bool],
    totals: list[int],
    ages: list[float],
) -> None:
    stub = routing_pb2_grpc.RoutingServiceStub(channel)
    present_before: set[str] = set()
    reported: set[str] = set()
    request = routing_pb2.WatchSnapshotsRequest(edge_id=f"bench-sub-{index}")
    last = max(watch) if watch else ""
    async for response in stub.WatchSnapshots(request):
        now = time.monotonic_ns()
        snap = response.snapshot
        totals[0] += 1
        totals[1] += response.ByteSize()
        if snap.created_unix_ms:
            ages.append(time.time() * 1000 - snap.created_unix_ms)
        backends = snap.backends
        if not ready[index]:
            routable = sum(1 for b in backends if b.status.health == HEALTHY and not b.drained)
            if routable >= expect:
                ready[index] = True
                if all(ready):
                    emit({"ready": True})
        if index == 0 and len(backends) != totals[2]:
            totals[2] = len(backends)
            emit({"registered": len(backends), "t": now})
        # Backends come sorted by name, so the watched ones (named first) are found without
        # walking all of them: this process must not be the bottleneck it measures.
        present: set[str] = set()
        for b in backends:
            name = b.spec.name
            if name > last:
                break
            if name in watch and b.status.health == HEALTHY and not b.drained:
                present.add(name)
        for name in watch:
            if name in present:
                present_before.add(name)
            elif name in present_before and name not in reported:
                reported.add(name)
                emit({"gone": name, "sub": index, "t": now})


async def main_async(args: argparse.Namespace) -> None:
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    channels = [
        grpc.aio.insecure_channel(
            args.target, options=[*options, ("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(args.channels or args.count)
    ]
    ready = [False] * args.count
    totals = [0, 0, -1]  # snapshots, bytes, backends in subscriber 0's last snapshot
    ages: list[float] = []  # ms from a snapshot's creation to its arrival
    watch = frozenset(n for n in (args.watch or "").split(",") if n)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(
            subscriber(i, channels[i % len(channels)], args.expect, watch, ready, totals, ages)
        )
        for i in range(args.count)
    ]
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await t
    waiter.cancel()
    ages.sort()
    emit(
        {
            "snapshots": totals[0],
            "bytes": totals[1],
            "age_p50_ms": ages[len(ages) // 2] if ages else None,
            "age_p99_ms": ages[int(len(ages) * 0.99)] if ages else None,
        }
    )
    for ch in channels:
        await ch.close(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, default=50)
    # One connection per subscriber, as separate edges have (0: as many as subscribers).
    parser.add_argument("--channels", type=int, default=0)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--watch", default="", help="NAME[,NAME...]")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
