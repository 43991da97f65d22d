"""The control plane's side of bench/traffic.py: simulated edges reporting traffic slices,
backends registered in etcd as agents write them, and the control plane's own collector-pause
and loop-lag histograms read from its /metrics."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

REPORT_SECONDS = 5.0


def slice_for(seq: int, backends: list[str], models: list[str], rng: random.Random) -> Any:
    from corral import traffic as hist
    from corral.v1 import traffic_pb2

    now = int(time.time() * 1000)
    piece = traffic_pb2.TrafficSlice(
        seq=seq, start_unix_ms=now - int(REPORT_SECONDS * 1000), end_unix_ms=now
    )
    for backend in backends:
        for model in models:
            n = rng.randint(20, 200)
            cell = piece.cells.add(backend=backend, model=model, team="default", requests=n)
            cell.statuses[200] = n - n // 50
            if n // 50:
                cell.statuses[502] = n // 50
            latency = hist.empty()
            for _ in range(n):
                latency[hist.bucket_of(rng.lognormvariate(-1.5, 0.8))] += 1
            cell.latency.extend(latency)
            cell.ttft.extend(latency[:20])
            cell.prompt_tokens, cell.completion_tokens = n * 300, n * 120
    piece.decisions["sticky"] = 100
    piece.inflight[backends[0]] = 3
    return piece


async def simulate_edges(
    target: str, count: int, backends: list[str], models: list[str], seconds: float
) -> int:
    """`count` edges each reporting one slice every REPORT_SECONDS for `seconds`."""
    from grpc import aio

    from corral.v1 import traffic_pb2

    sent = 0

    async def one(index: int) -> None:
        nonlocal sent
        rng = random.Random(index)
        await asyncio.sleep(rng.random() * REPORT_SECONDS)  # edges start at different times
        async with aio.insecure_channel(target) as channel:
            call = channel.unary_unary(
                "/corral.v1.RoutingService/ReportTraffic",
                request_serializer=traffic_pb2.ReportTrafficRequest.SerializeToString,
                response_deserializer=traffic_pb2.ReportTrafficResponse.FromString,
            )
            deadline = time.monotonic() + seconds
            seq = 0
            template = slice_for(0, backends, models, rng)  # built once: this is the client
            while time.monotonic() < deadline:
                seq += 1
                now = int(time.time() * 1000)
                template.seq = seq
                template.start_unix_ms = now - int(REPORT_SECONDS * 1000)
                template.end_unix_ms = now
                request = traffic_pb2.ReportTrafficRequest(
                    edge_id=f"sim-edge-{index:03d}", incarnation=f"i{index}", slices=[template]
                )
                await call(request, timeout=30)
                sent += 1
                await asyncio.sleep(REPORT_SECONDS)

    await asyncio.gather(*(one(i) for i in range(count)))
    return sent


async def register_backends(etcd_url: str, count: int) -> Any:
    """Write `count` healthy backends as agents would (under one kept lease)."""
    from controlplane.keys import KeyLayout
    from controlplane.store.etcd import EtcdStore
    from corral.v1 import types_pb2

    layout = KeyLayout.from_prefix("/corral/")
    store = EtcdStore([etcd_url])
    await store.start()
    # Long enough to outlive the samples even if a keep-alive is late (with a 60 s lease the
    # backends were gone from the later samples of a 60-sample run).
    lease = await store.grant_lease(3600)
    for i in range(count):
        name = f"gpu-{i:04d}"
        spec = types_pb2.Backend(
            spec=types_pb2.BackendSpec(
                name=name, url=f"http://10.0.{i // 250}.{i % 250}:8000",
                type=types_pb2.BACKEND_TYPE_VLLM, weight=1.0,
            ),
            agent_id=f"agent-{i}",
        )  # fmt: skip
        status = types_pb2.BackendStatus(
            health=types_pb2.HEALTH_STATE_HEALTHY,
            reason="ok",
            models=[types_pb2.ModelInfo(id=f"model-{i % 20}", loaded=True)],
            load=types_pb2.BackendLoad(running=i % 7, waiting=i % 3, kv_cache_usage=0.4),
        )
        await store.put(layout.spec(name), spec.SerializeToString(), lease=lease)
        await store.put(layout.status(name), status.SerializeToString(), lease=lease)
    return store


GC_METRIC = "corral_controlplane_gc_pause_seconds"


def gc_pauses(metrics_text: str) -> dict[str, dict[str, float]]:
    """The control plane's collector pauses so far, by generation: count, sum (s) and the
    histogram's cumulative buckets (upper bound -> count)."""
    out: dict[str, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(GC_METRIC):
            continue
        name, _, value = line.rpartition(" ")
        labels = dict(
            item.split("=", 1) for item in name[name.index("{") + 1 : -1].split(",") if item
        )
        gen = out.setdefault(labels["generation"].strip('"'), {})
        kind = name[len(GC_METRIC) : name.index("{")]
        key = f"le {labels['le'].strip(chr(34))}" if kind == "_bucket" else kind.lstrip("_")
        gen[key] = float(value)
    return out


def gc_during(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> Any:
    """Per generation: collections, their total and mean pause (ms), and how many took
    50 ms or more, between two readings."""
    rows = {}
    for gen in sorted(after):
        was = before.get(gen, {})
        diff = {k: v - was.get(k, 0.0) for k, v in after[gen].items()}
        count = diff.get("count", 0.0)
        rows[gen] = {
            "count": count,
            "total_ms": diff.get("sum", 0.0) * 1000,
            "over_50ms": count - diff.get("le 0.05", 0.0),
        }
    return rows


LAG_METRIC = "corral_controlplane_loop_lag_seconds"


def loop_lags(metrics_text: str) -> dict[float, float]:
    """The control plane's loop-lag histogram so far: upper bound (s) -> cumulative count
    (empty when it has no such metric)."""
    out: dict[float, float] = {}
    prefix = LAG_METRIC + '_bucket{le="'
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            bound, _, value = line[len(prefix) :].partition('"} ')
            out[float(bound)] = float(value)
    return out


def lags_during(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Ticks observed, those 25 ms and 50 ms late or more, and the bound of the latest
    (the longest stall is at most that), between two readings."""
    if not after:
        return {}
    diff = {bound: count - before.get(bound, 0.0) for bound, count in sorted(after.items())}
    total = diff[float("inf")]
    longest = next(bound for bound, count in diff.items() if count >= total)
    return {"ticks": total, "over_25ms": total - diff.get(0.025, 0.0),
            "over_50ms": total - diff.get(0.05, 0.0), "longest_le": longest}  # fmt: skip
