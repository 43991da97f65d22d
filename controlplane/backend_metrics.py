"""Per-backend gauges read from this replica's routing view when scraped (no bookkeeping).

Every replica exports the same values (they follow one store); alert on max or min by
backend. A backend whose agent is gone leaves routing and its series end, so
`corral_controlplane_backends` (a count) is exported too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.v1 import types_pb2

_UP = (types_pb2.HEALTH_STATE_HEALTHY, types_pb2.HEALTH_STATE_DEGRADED)


class BackendCollector(Collector):
    def __init__(self, backends: Callable[[], list[types_pb2.Backend] | None]) -> None:
        self._backends = backends

    def describe(self) -> Iterable[Metric]:
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        return self._families(self._backends() or [])

    @staticmethod
    def _families(backends: list[types_pb2.Backend]) -> list[Metric]:
        up = GaugeMetricFamily(
            "corral_controlplane_backend_up",
            "1 while the backend's agent reports it healthy or degraded, else 0.",
            labels=["backend"],
        )
        drained = GaugeMetricFamily(
            "corral_controlplane_backend_drained",
            "1 while an operator has the backend drained.",
            labels=["backend"],
        )
        running = GaugeMetricFamily(
            "corral_controlplane_backend_running",
            "Requests the backend's server reports running.",
            labels=["backend"],
        )
        waiting = GaugeMetricFamily(
            "corral_controlplane_backend_waiting",
            "Requests the backend's server reports queued.",
            labels=["backend"],
        )
        count = GaugeMetricFamily(
            "corral_controlplane_backends", "Backends registered (routable or not)."
        )
        for backend in backends:
            name = [backend.spec.name]
            up.add_metric(name, 1.0 if backend.status.health in _UP else 0.0)
            drained.add_metric(name, 1.0 if backend.drained else 0.0)
            running.add_metric(name, float(backend.status.load.running))
            waiting.add_metric(name, float(backend.status.load.waiting))
        count.add_metric([], float(len(backends)))
        return [up, drained, running, waiting, count]
