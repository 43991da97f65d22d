"""The edge's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

from corral.v1 import traffic_pb2
from edge.exposition import CONTENT_TYPE, Counter, Family, Gauge, Registry, go_float
from edge.traffic import EdgeState, TrafficRecorder

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_BOUNDS = (*_LATENCY_BUCKETS, math.inf)
# The `le` labels exactly as Prometheus writes them.
_LE = tuple(go_float(b) for b in _BOUNDS)


class _Count:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()


class _Histogram:
    __slots__ = ("counts", "created", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(_BOUNDS)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()

    def buckets(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        for le, count in zip(_LE, self.counts, strict=True):
            total += count
            out.append((le, float(total)))
        return out


class _HotMetrics:
    """Requests, latency, time to first token, in-flight attempts and routing decisions, in
    the shape Prometheus client libraries' counters, histograms and gauges expose them."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], _Count] = {}
        self.latency: dict[str, _Histogram] = {}
        self.ttft: dict[str, _Histogram] = {}
        self.inflight: dict[str, int] = {}
        self.decisions: dict[str, _Count] = {}

    def collect(self) -> Iterable[Family]:
        requests = Family(
            "corral_edge_requests",
            "Requests answered, by model, backend and HTTP status.",
            "counter",
            ["model", "backend", "status"],
        )
        latency = Family(
            "corral_edge_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            "histogram",
            ["endpoint"],
        )
        ttft = Family(
            "corral_edge_time_to_first_token_seconds",
            "Time from request to the first streamed chunk.",
            "histogram",
            ["model"],
        )
        inflight = Family(
            "corral_edge_backend_inflight",
            "Requests this edge has in flight to each backend.",
            "gauge",
            ["backend"],
        )
        decisions = Family(
            "corral_edge_routing_decisions",
            "Routing decisions by route (sticky, spill, least-connections, retry).",
            "counter",
            ["route"],
        )
        for (model, backend, status), count in list(self.requests.items()):
            requests.add([model, backend, str(status)], float(count.value), count.created)
        for family, hists in ((latency, self.latency), (ttft, self.ttft)):
            for label, hist in list(hists.items()):
                family.add_histogram([label], hist.buckets(), hist.sum, hist.created)
        for backend, value in list(self.inflight.items()):
            inflight.add([backend], float(value))
        for route, count in list(self.decisions.items()):
            decisions.add([route], float(count.value), count.created)
        return [requests, latency, ttft, inflight, decisions]


class EdgeMetrics:
    """Counters, gauges and histograms; the per-request ones cost a dict lookup and an add."""

    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        # The per-request metrics are plain numbers (no lock, no label lookup per request),
        # turned into Prometheus samples when scraped.
        self._hot = _HotMetrics()
        r.register(self._hot)
        # The same requests, per (backend, model) and cut into slices for the control plane.
        self.traffic = TrafficRecorder()
        self.retries = Counter(
            "corral_edge_retries",
            "Attempts retried on another backend, by the backend that failed and why.",
            ["backend", "reason"],
            registry=r,
        )
        self.ejections = Counter(
            "corral_edge_ejections",
            "Backends ejected by passive health checks.",
            ["backend"],
            registry=r,
        )
        self.lane_handovers = Counter(
            "corral_edge_lane_handovers",
            "Connections the lane (edge.server: lane) handed to aiohttp: a request it does "
            "not serve (another route, HTTP/1.0, an unusual or incomplete message).",
            registry=r,
        )
        self.queued = Gauge(
            "corral_edge_queued_requests", "Requests waiting for a free backend.", registry=r
        )
        self.snapshot_version = Gauge(
            "corral_edge_snapshot_version", "Version of the routing snapshot in force.", registry=r
        )
        self.snapshot_age = Gauge(
            "corral_edge_snapshot_age_seconds",
            "Seconds since the snapshot in force was built by the control plane.",
            registry=r,
        )
        self.snapshots_applied = Counter(
            "corral_edge_snapshots_applied",
            "Snapshots applied, by source (controlplane, state).",
            ["source"],
            registry=r,
        )
        self.snapshots_refused = Counter(
            "corral_edge_snapshots_refused",
            "Snapshots refused as older than the one in force.",
            registry=r,
        )
        self.snapshot_failures = Counter(
            "corral_edge_snapshot_failures",
            "Failures while following snapshots: a snapshot that could not be applied "
            "(apply), or the subscriber itself failing and being restarted (subscriber).",
            ["stage"],
            registry=r,
        )
        self.task_restarts = Counter(
            "corral_edge_task_restarts",
            "Background tasks (policy, traffic, limits, tracing) restarted after failing.",
            ["task"],
            registry=r,
        )
        self.controlplane_connected = Gauge(
            "corral_edge_controlplane_connected",
            "1 while a snapshot stream to a control plane is open.",
            registry=r,
        )

    def bind_snapshot_age(self, created_ms: Callable[[], int]) -> None:
        def age() -> float:
            ms = created_ms()
            return max(0.0, time.time() - ms / 1000.0) if ms else 0.0

        self.snapshot_age.set_function(age)

    def request(self, model: str, backend: str, status: int, endpoint: str, seconds: float) -> None:
        hot = self._hot
        key = (model, backend, status)
        count = hot.requests.get(key)
        if count is None:
            count = hot.requests[key] = _Count()
        count.value += 1
        hist = hot.latency.get(endpoint)
        if hist is None:
            hist = hot.latency[endpoint] = _Histogram()
        hist.counts[bisect_left(_BOUNDS, seconds)] += 1
        hist.sum += seconds

    def first_token(self, model: str, seconds: float) -> None:
        ttft = self._hot.ttft
        hist = ttft.get(model)
        if hist is None:
            hist = ttft[model] = _Histogram()
        hist.counts[bisect_left(_BOUNDS, seconds)] += 1
        hist.sum += seconds

    def attempt_started(self, backend: str) -> None:
        inflight = self._hot.inflight
        inflight[backend] = inflight.get(backend, 0) + 1

    def attempt_ended(self, backend: str) -> None:
        self._hot.inflight[backend] -= 1

    def decision(self, route: str) -> None:
        decisions = self._hot.decisions
        count = decisions.get(route)
        if count is None:
            count = decisions[route] = _Count()
        count.value += 1

    def cut_traffic(self, edge_state: EdgeState | None = None) -> traffic_pb2.TrafficSlice | None:
        """Close the current traffic slice (see TrafficRecorder.cut)."""
        hot = self._hot
        decisions = {route: count.value for route, count in list(hot.decisions.items())}
        retries = [(backend, cell.value) for (backend, _), cell in list(self.retries.cells.items())]
        return self.traffic.cut(decisions, retries, dict(hot.inflight), edge_state=edge_state)

    def render(self) -> bytes:
        return self.registry.render()
