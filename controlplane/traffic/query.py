"""GetTraffic's answer from the chosen records: grouped, merged, with rates and quantiles."""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.traffic.records import (
    Resolution,
    errors_by_class,
    is_error,
    merge_cell,
    quantiles,
)
from corral import traffic as hist
from corral.v1 import traffic_pb2

# A record whose edge wrote nothing for this long no longer counts for in-flight.
INFLIGHT_FRESH_MS = 15_000


def _group_key(group: int, edge: str, cell: traffic_pb2.TrafficCell) -> str:
    if group == traffic_pb2.TRAFFIC_GROUP_MODEL:
        return cell.model
    if group == traffic_pb2.TRAFFIC_GROUP_EDGE:
        return edge
    if group == traffic_pb2.TRAFFIC_GROUP_TEAM:
        return cell.team or "-"
    if group == traffic_pb2.TRAFFIC_GROUP_BACKEND_MODEL:
        return f"{cell.backend}/{cell.model}"
    return cell.backend


def answer(
    records: Sequence[traffic_pb2.TrafficRecord],
    request: traffic_pb2.GetTrafficRequest,
    resolution: Resolution,
    start_ms: int,
    now_ms: int,
) -> traffic_pb2.GetTrafficResponse:
    group = request.group_by
    merged: dict[str, traffic_pb2.TrafficCell] = {}
    series: dict[str, dict[int, traffic_pb2.TrafficCell]] = {}
    decisions: dict[str, int] = {}
    inflight: dict[str, int] = {}
    edges: set[str] = set()
    earliest = now_ms
    for record in records:
        edges.add(record.edge_id)
        bucket = resolution.bucket(record.start_unix_ms)
        earliest = min(earliest, bucket)
        for route, count in record.decisions.items():
            decisions[route] = decisions.get(route, 0) + count
        if now_ms - record.end_unix_ms < INFLIGHT_FRESH_MS and group in (
            traffic_pb2.TRAFFIC_GROUP_UNSPECIFIED,
            traffic_pb2.TRAFFIC_GROUP_BACKEND,
        ):
            for backend, level in record.inflight.items():
                inflight[backend] = inflight.get(backend, 0) + level
        for cell in record.cells:
            key = _group_key(group, record.edge_id, cell)
            into = merged.get(key)
            if into is None:
                into = merged[key] = traffic_pb2.TrafficCell()
            merge_cell(into, cell)
            if request.series:
                points = series.setdefault(key, {})
                point = points.get(bucket)
                if point is None:
                    point = points[bucket] = traffic_pb2.TrafficCell()
                merge_cell(point, cell)
    span = max((now_ms - max(earliest, start_ms - resolution.seconds * 1000)) / 1000.0, 1.0)
    total = sum(cell.requests for cell in merged.values())
    out = traffic_pb2.GetTrafficResponse(
        start_unix_ms=start_ms,
        end_unix_ms=now_ms,
        requests=total,
        requests_per_second=total / span,
        bounds=hist.BOUNDS,
        edges=sorted(edges),
    )
    out.decisions.update(decisions)
    first_bucket = resolution.bucket(start_ms)
    for key in sorted(merged, key=lambda k: (-merged[k].requests, k)):
        cell = merged[key]
        row = out.rows.add(key=key, requests=cell.requests)
        statuses = dict(cell.statuses)
        errors = sum(n for status, n in statuses.items() if is_error(status))
        row.share = cell.requests / total if total else 0.0
        row.requests_per_second = cell.requests / span
        row.error_rate = errors / cell.requests if cell.requests else 0.0
        row.errors.update(errors_by_class(statuses))
        latency = list(cell.latency)
        ttft = list(cell.ttft)
        row.latency_p50_seconds, row.latency_p95_seconds, row.latency_p99_seconds = quantiles(
            latency
        )
        row.ttft_p50_seconds, row.ttft_p95_seconds, row.ttft_p99_seconds = quantiles(ttft)
        row.latency.extend(latency)
        row.ttft.extend(ttft)
        row.prompt_tokens = cell.prompt_tokens
        row.completion_tokens = cell.completion_tokens
        row.cache_hits = cell.cache_hits
        row.limit_refusals = cell.limit_refusals
        row.retries = cell.retries
        row.inflight = inflight.get(key, 0)
        if request.series:
            points = series.get(key, {})
            bucket = first_bucket
            step = resolution.seconds * 1000
            while bucket <= now_ms:
                point = points.get(bucket)
                p = row.series.add(start_unix_ms=bucket)
                if point is not None:
                    p.requests = point.requests
                    p.errors = sum(n for s, n in point.statuses.items() if is_error(s))
                    p.p95_latency_seconds = hist.quantile(list(point.latency), 0.95)
                bucket += step
    return out
