"""edge/exposition.py writes the metrics page prometheus_client would write for the same
metrics, and Prometheus' own parser reads it back."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.exposition import CONTENT_TYPE, Counter, Family, Gauge, Registry, go_float
from edge.metrics import EdgeMetrics

BOUNDS = (0.005, 0.1, 2.5, 300.0, math.inf)
# Label values that need escaping, and names in an order that sorting changes.
ODD = 'a "quoted" back\\slash\nnewline'


def _created_masked(page: bytes) -> str:
    """The page with every `_created` sample's value (a time of creation) blanked."""
    return re.sub(r"^(\S+_created(?:\{.*\})?) \S+$", r"\1 T", page.decode(), flags=re.M)


class _HistogramCollector:
    """A histogram as edge/metrics.py keeps one: per-bucket counts, rendered cumulatively."""

    def __init__(self, observed: list[float]) -> None:
        self.observed = observed

    def collect(self) -> list[Family]:
        family = Family("demo_seconds", "Demo latency.", "histogram", ["zone"])
        buckets = [(go_float(b), float(sum(v <= b for v in self.observed))) for b in BOUNDS]
        family.add_histogram(["b"], buckets, sum(self.observed), created=1.0)
        return [family]


def _counters_and_gauges(counter: Any, gauge: Any, registry: Any) -> None:
    """The same counters and gauges, made with either library's classes (the same calls)."""
    doc = "Requests.\nTwo lines."
    labelled = counter("demo_requests", doc, ["zone", "code"], registry=registry)
    labelled.labels(ODD, "200").inc()
    labelled.labels("b", "500").inc(2.5)
    counter("demo_unused", "Never counted.", ["reason"], registry=registry)
    counter("demo_plain", "No labels.", registry=registry).inc(1234567.0)
    gauge("demo_level", "Set.", registry=registry).set(-3)
    gauge("demo_read", "Read when scraped.", registry=registry).set_function(lambda: 0.25)


def test_page_is_prometheus_clients_line_for_line() -> None:
    """Counters, gauges, a histogram render as prometheus_client's line for line, _created aside."""
    observed = [0.001, 0.05, 0.05, 1.0, 7.0, 1000.0]
    theirs = CollectorRegistry()
    _counters_and_gauges(PromCounter, PromGauge, theirs)
    hist = PromHistogram("demo_seconds", "Demo latency.", ["zone"], buckets=BOUNDS, registry=theirs)
    for value in observed:
        hist.labels("b").observe(value)
    ours = Registry()
    _counters_and_gauges(Counter, Gauge, ours)
    ours.register(_HistogramCollector(observed))

    assert _created_masked(ours.render()) == _created_masked(generate_latest(theirs))
    assert CONTENT_TYPE == CONTENT_TYPE_LATEST


@pytest.mark.parametrize(
    "value", [0.0, 1.0, -2.0, 0.005, 1e6, 123456789.0, 1.5e-7, math.inf, -math.inf, math.nan]
)
def test_values_are_written_as_go_writes_them(value: float) -> None:
    """go_float agrees with prometheus_client's floatToGoString."""
    from prometheus_client.utils import floatToGoString

    assert go_float(value) == floatToGoString(value)


def test_edge_metrics_page_parses_back() -> None:
    """An EdgeMetrics page reads back via Prometheus' parser as the counts and histogram it had."""
    metrics = EdgeMetrics()
    metrics.request("m", "b1", 200, "chat", 0.02)
    metrics.request("m", "b1", 200, "chat", 3.0)
    metrics.request("m", "b2", 502, "chat", 0.001)
    metrics.first_token("m", 0.3)
    metrics.retries.labels("b2", "connect").inc()
    metrics.snapshot_version.set(7)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    requests = {
        (s.labels["backend"], s.labels["status"]): s.value
        for s in families["corral_edge_requests"].samples
        if s.name == "corral_edge_requests_total"
    }
    assert requests == {("b1", "200"): 2.0, ("b2", "502"): 1.0}
    latency = {
        s.labels.get("le"): s.value
        for s in families["corral_edge_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert latency["0.005"] == 1.0 and latency["0.025"] == 2.0 and latency["+Inf"] == 3.0
    assert families["corral_edge_snapshot_version"].samples[0].value == 7.0
    assert (
        metrics.registry.value("corral_edge_retries_total", {"backend": "b2", "reason": "connect"})
        == 1.0
    )
    assert (
        metrics.registry.value("corral_edge_retries_total", {"backend": "b1", "reason": "x"})
        is None
    )


def test_a_metric_registered_twice_is_refused() -> None:
    """Two collectors naming the same metric on one page: ValueError, as prometheus_client."""
    registry = Registry()
    Counter("demo_total_things", "One.", registry=registry)
    with pytest.raises(ValueError, match="demo_total_things"):
        Gauge("demo_total_things", "Two.", registry=registry)


def test_labels_must_match_the_names() -> None:
    """A counter asked for the wrong number of label values says which it takes."""
    counter = Counter("demo_labelled", "Labelled.", ["a", "b"])
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
