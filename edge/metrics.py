"""The edge's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class EdgeMetrics:
    """Counters, gauges and histograms; label children are cached off the hot path."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "corral_edge_requests",
            "Requests answered, by model, backend and HTTP status.",
            ["model", "backend", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "corral_edge_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "corral_edge_time_to_first_token_seconds",
            "Time from request to the first streamed chunk.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "corral_edge_backend_inflight",
            "Requests this edge has in flight to each backend.",
            ["backend"],
            registry=r,
        )
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
        self.decisions = Counter(
            "corral_edge_routing_decisions",
            "Routing decisions by route (sticky, spill, least-connections, retry).",
            ["route"],
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
        self.controlplane_connected = Gauge(
            "corral_edge_controlplane_connected",
            "1 while a snapshot stream to a control plane is open.",
            registry=r,
        )
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._ttft: dict[str, Histogram] = {}
        self._inflight: dict[str, Gauge] = {}
        self._decisions: dict[str, Counter] = {}

    def bind_snapshot_age(self, created_ms: Callable[[], int]) -> None:
        def age() -> float:
            ms = created_ms()
            return max(0.0, time.time() - ms / 1000.0) if ms else 0.0

        self.snapshot_age.set_function(age)

    def request(self, model: str, backend: str, status: int, endpoint: str, seconds: float) -> None:
        key = (model, backend, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(model, backend, str(status))
        child.inc()
        hist = self._latency.get(endpoint)
        if hist is None:
            hist = self._latency[endpoint] = self.latency.labels(endpoint)
        hist.observe(seconds)

    def first_token(self, model: str, seconds: float) -> None:
        hist = self._ttft.get(model)
        if hist is None:
            hist = self._ttft[model] = self.ttft.labels(model)
        hist.observe(seconds)

    def inflight_gauge(self, backend: str) -> Gauge:
        gauge = self._inflight.get(backend)
        if gauge is None:
            gauge = self._inflight[backend] = self.inflight.labels(backend)
        return gauge

    def decision(self, route: str) -> None:
        child = self._decisions.get(route)
        if child is None:
            child = self._decisions[route] = self.decisions.labels(route)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
