"""The agent's own Prometheus metrics, in a registry of its own (several agents share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from corral.v1 import types_pb2

# Probe error kinds, the label values of corral_agent_probe_errors_total.
TIMEOUT = "timeout"
CONNECT = "connect"
HTTP_STATUS = "http_status"
PARSE = "parse"
# The request could not be made as configured (aiohttp refused it before sending).
CONFIG = "config"


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.probe_latency = Histogram(
            "corral_agent_probe_duration_seconds",
            "Time for one probe request to the inference server, by endpoint.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.probe_errors = Counter(
            "corral_agent_probe_errors",
            "Failed probes by endpoint and kind (timeout, connect, http_status, parse, config).",
            ["endpoint", "kind"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "corral_agent_reconnects",
            "Connection attempts to the control plane after the first.",
            registry=self.registry,
        )
        self.reports = Counter(
            "corral_agent_reports",
            "Reports sent to the control plane (changes and heartbeats).",
            registry=self.registry,
        )
        self.connected = Gauge(
            "corral_agent_connected",
            "1 while a registered session with a control-plane replica is open.",
            registry=self.registry,
        )
        self.health = Gauge(
            "corral_agent_health_state",
            "1 for the backend's current health state, 0 for the others.",
            ["state"],
            registry=self.registry,
        )
        for name in _STATE_NAMES.values():
            self.health.labels(state=name).set(0)

    def observe_probe(self, endpoint: str, seconds: float) -> None:
        self.probe_latency.labels(endpoint=endpoint).observe(seconds)

    def probe_error(self, endpoint: str, kind: str) -> None:
        self.probe_errors.labels(endpoint=endpoint, kind=kind).inc()

    def set_health(self, state: types_pb2.HealthState.ValueType) -> None:
        for value, name in _STATE_NAMES.items():
            self.health.labels(state=name).set(1 if value == state else 0)


_STATE_NAMES: dict[types_pb2.HealthState.ValueType, str] = {
    types_pb2.HEALTH_STATE_HEALTHY: "healthy",
    types_pb2.HEALTH_STATE_LOADING: "loading",
    types_pb2.HEALTH_STATE_DEGRADED: "degraded",
    types_pb2.HEALTH_STATE_UNHEALTHY: "unhealthy",
}


def state_name(state: types_pb2.HealthState.ValueType) -> str:
    return _STATE_NAMES.get(state, "unknown")
