"""deploy/prometheus/: the scrape configs, checked offline: compose targets hit real metrics
ports, and Kubernetes relabelling keeps exactly the metrics ports.
"""

from __future__ import annotations

import re
from typing import Any

from tests.support.deploy import (
    COMPOSE_FILE,
    DEPLOY,
    compose_corral_args,
    compose_services,
    containers,
    corral_ports,
    etcd_flag,
    k8s_corral_containers,
    k8s_id,
    load_docs,
    parse_corral,
    workloads,
)

PROMETHEUS = DEPLOY / "prometheus"


def test_prometheus_compose_targets_hit_real_metrics_ports() -> None:
    """Every scrape target in prometheus.yml is a compose service serving /metrics on that port."""
    [config] = load_docs(PROMETHEUS / "prometheus.yml")
    services = compose_services()
    args = compose_corral_args()

    def metrics_port(service: str) -> int:
        if service in args:
            return corral_ports(args[service])["metrics"]
        client = etcd_flag(services[service]["command"], "listen-client-urls")
        return int(client.rsplit(":", 1)[1])  # etcd serves /metrics on its client port

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    covered = set()
    for job in jobs.values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, target
                assert metrics_port(host) == int(port), target
                covered.add(host)
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                assert metrics_port(host) == dns["port"], host
                covered.add(host)
    wanted = set(args) | {n for n in services if n.startswith("etcd-")}
    assert wanted <= covered, f"not scraped: {sorted(wanted - covered)}"
    prometheus = next(s for s in services.values() if s["image"].startswith("prom/prometheus:"))
    mount = next(
        v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    )
    assert (COMPOSE_FILE.parent / mount.split(":", 1)[0]).resolve() == (
        PROMETHEUS / "prometheus.yml"
    ).resolve()


def _relabel_keeps(rules: list[dict[str, Any]], labels: dict[str, str]) -> bool:
    """Prometheus `keep` relabelling (anchored regexes, ';'-joined source labels)."""
    for rule in rules:
        if rule.get("action", "replace") != "keep":
            continue
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        if not re.fullmatch(rule.get("regex", "(.*)"), value):
            return False
    return True


def test_prometheus_kubernetes_keeps_exactly_the_metrics_ports() -> None:
    """Pod discovery keeps one target per metrics port in deploy/k8s/, and nothing else."""
    [config] = load_docs(PROMETHEUS / "prometheus-kubernetes.yml")
    kept: set[tuple[str, str, int]] = set()
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for container in containers(workload):
            for port in container.get("ports", []):
                target = {
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
                for key, value in labels.items():
                    target["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = (
                        value
                    )
                for job in config["scrape_configs"]:
                    if _relabel_keeps(job.get("relabel_configs", []), target):
                        kept.add(
                            (workload["metadata"]["name"], container["name"], port["containerPort"])
                        )
    expected: set[tuple[str, str, int]] = set()
    for workload, container in k8s_corral_containers():
        args = parse_corral(container["args"], k8s_id(workload))
        expected.add(
            (workload["metadata"]["name"], container["name"], corral_ports(args)["metrics"])
        )
    expected.add(("etcd", "etcd", 2381))
    assert kept == expected
