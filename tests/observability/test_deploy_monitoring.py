"""deploy/: the Grafana dashboard and Prometheus alert rules use only metrics the code exports.

promtool is not available here: the rules are parsed, every metric and label a query names
is checked against the exposition of the real metric registries (edge and control plane,
with one request and one backend recorded), and the queries' brackets must balance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from controlplane.backend_metrics import BackendCollector
from controlplane.metrics import Metrics
from corral.v1 import types_pb2
from edge.gateway.call import Call
from edge.metrics import EdgeMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
GRAFANA = DEPLOY / "grafana" / "corral-dashboard.json"
# Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = {"instance", "job", "pod", "component", "node"}
_METRIC = re.compile(r"\b(corral_[a-z0-9_]+)(\{[^}]*\})?")
_BY = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from the edge's and the control plane's registries."""
    edge = EdgeMetrics()
    edge.attempt_started("gpu-a")
    edge.decision("sticky")
    edge.retries.labels("gpu-a", "connect").inc()
    edge.ejections.labels("gpu-a").inc()
    edge.request("m", "gpu-a", 200, "chat", 0.2)
    edge.first_token("m", 0.05)
    edge.traffic.finished(Call("id", "id", 0.0, 0.0, "chat"), "m", "gpu-a", 200, 0.2)
    controlplane = Metrics()
    controlplane.store_writes.labels("traffic").inc()
    controlplane.rejections.labels("invalid_argument").inc()
    backend = types_pb2.Backend(
        spec=types_pb2.BackendSpec(name="gpu-a"),
        status=types_pb2.BackendStatus(health=types_pb2.HEALTH_STATE_HEALTHY),
    )
    controlplane.registry.register(BackendCollector(lambda: [backend]))
    names: dict[str, set[str]] = {}
    for text in (edge.render(), controlplane.render()):
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def check_query(expr: str, metrics: dict[str, set[str]]) -> None:
    assert expr.count("(") == expr.count(")"), expr
    assert expr.count("{") == expr.count("}"), expr
    assert expr.count("[") == expr.count("]"), expr
    used = _METRIC.findall(expr)
    assert used, f"no Corral metric in {expr!r}"
    labels: set[str] = set(TARGET_LABELS)
    for name, matchers in used:
        assert name in metrics, f"{name} is not exported (query {expr!r})"
        labels |= metrics[name]
        for matcher in re.findall(r"([a-z_]+)\s*[=!~]", matchers):
            assert matcher in metrics[name], f"{name} has no label {matcher!r}"
    for group in _BY.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            assert label in labels, f"label {label!r} of {expr!r} is on none of its metrics"


def test_alert_rules_use_exported_metrics() -> None:
    """Every rule is complete and queries exported metrics and labels; the four asked exist."""
    metrics = exported()
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    for wanted in (
        "CorralBackendDown",
        "CorralHighErrorRate",
        "CorralHighLatencyP95",
        "CorralSnapshotStale",
    ):
        assert wanted in names
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        check_query(rule["expr"], metrics)


def test_grafana_dashboard_uses_exported_metrics() -> None:
    """The dashboard JSON imports (uid, datasource variable, panels); queries exported metrics."""
    metrics = exported()
    doc = json.loads(GRAFANA.read_text())
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 30
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    occupied: set[tuple[int, int]] = set()
    queries = 0
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            check_query(target["expr"].replace("$__rate_interval", "5m"), metrics)
            queries += 1
    assert queries >= 10


def test_the_check_catches_a_wrong_name() -> None:
    """A misspelt metric or label fails the check (the check itself can fail)."""
    metrics = exported()
    for bad in (
        "sum(rate(corral_edge_request_total[5m]))",
        "sum by (backnd) (rate(corral_edge_requests_total[5m]))",
        'rate(corral_edge_requests_total{stauts="500"}[5m])',
        "max(corral_controlplane_backend_up",
    ):
        try:
            check_query(bad, metrics)
        except AssertionError:
            continue
        raise AssertionError(f"{bad!r} passed the check")
