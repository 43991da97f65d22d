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
from collections.abc import Iterator

import grpc
import orjson

from corral.v1 import routing_pb2, types_pb2

HEALTHY = types_pb2.HEALTH_STATE_HEALTHY


def emit(obj: dict[str, object]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.flush()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, value or start, end or -1) of each field in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, -1
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        elif wire == 5:
            yield number, wire, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")


class SnapshotView:
    """A WatchSnapshotsResponse read lazily: backends are parsed one by one on demand."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.spans: list[tuple[int, int]] = []
        self.created_unix_ms = 0
        for number, _, start, end in _fields(raw, 0, len(raw)):
            if number == 1:  # the snapshot
                for n, wire, a, b in _fields(raw, start, end):
                    if n == 3:
                        self.spans.append((a, b))
                    elif n == 5 and wire == 0:
                        self.created_unix_ms = a
        self.count = len(self.spans)

    def backends(self) -> Iterator[types_pb2.Backend]:
        for a, b in self.spans:
            yield types_pb2.Backend.FromString(self.raw[a:b])


def routable_backend(b: types_pb2.Backend) -> bool:
    return b.status.health == HEALTHY and not b.drained


async def subscriber(
    index: int,
    channel: grpc.aio.Channel,
    expect: int,
    watch: frozenset[str],
    ready: list[bool],
    totals: list[int],
    ages: list[float],
) -> None:
    # Raw bytes, walked by hand: a full parse of a 200 KB snapshot per subscriber per version
    # would make this process the bottleneck it is meant to measure.
    watch_snapshots = channel.unary_stream(
        "/corral.v1.RoutingService/WatchSnapshots",
        request_serializer=routing_pb2.WatchSnapshotsRequest.SerializeToString,
        response_deserializer=bytes,
    )
    present_before: set[str] = set()
    reported: set[str] = set()
    request = routing_pb2.WatchSnapshotsRequest(edge_id=f"bench-sub-{index}")
    last = max(watch) if watch else ""
    async for raw in watch_snapshots(request):
        now = time.monotonic_ns()
        totals[0] += 1
        totals[1] += len(raw)
        view = SnapshotView(raw)
        if view.created_unix_ms:
            ages.append(time.time() * 1000 - view.created_unix_ms)
        if not ready[index]:
            routable = sum(1 for b in view.backends() if routable_backend(b))
            if routable >= expect:
                ready[index] = True
                if all(ready):
                    emit({"ready": True})
        if index == 0 and view.count != totals[2]:
            totals[2] = view.count
            emit({"registered": view.count, "t": now})
        # Backends come sorted by name, so the watched ones (named first) are found without
        # walking all of them: this process must not be the bottleneck it measures.
        present: set[str] = set()
        for b in view.backends():
            name = b.spec.name
            if name > last:
                break
            if name in watch and routable_backend(b):
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
