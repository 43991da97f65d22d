"""deploy/: manifests, compose file, systemd units and scrape configs, checked offline.

Schemas come from packages (kubernetes-validate's bundled Kubernetes schemas, the compose-spec
schema vendored in check-jsonschema); everything that names a `corral` flag is parsed with the
real CLI parser, so a renamed flag breaks this test instead of a deployment.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import copy
import importlib.resources
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from controlplane.errors import InvalidArgumentError
from controlplane.validation import check_spec
from corral import __version__
from corral.cli import build_parser, config_from_args
from corral.config import SECTIONS, ConfigError, load
from corral.v1 import types_pb2
from tests.support.etcd import etcd_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
SYSTEMD = DEPLOY / "systemd"
PROMETHEUS = DEPLOY / "prometheus"
# The oldest Kubernetes the manifests promise to work on (gRPC probes are GA since 1.27).
K8S_VERSION = "1.30.0"
CORRAL_IMAGE = "registry.example.com/corral"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


# ---------------------------------------------------------------- helpers


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in k8s_files() for doc in load_docs(path)]


def k8s_id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def workloads() -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when it has none); digests count as pinned."""
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def assert_pinned(image: str, where: str) -> None:
    tag = image_tag(image)
    assert tag, f"{where}: image {image!r} has no tag"
    assert tag != "latest", f"{where}: image {image!r} is not pinned"
    assert re.search(r"\d", tag), f"{where}: tag of {image!r} names no version"


def parse_corral(argv: list[str], where: str) -> argparse.Namespace:
    """Parse a corral command line with the real parser; fail with its message when it rejects."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `corral {' '.join(argv)}` does not parse: {stderr.getvalue()}")


def secret_file_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flags of a parsed command that name files holding secrets, with their values."""
    hints = typing.get_type_hints(SECTIONS[args.command])
    return {
        name: value
        for name, value in vars(args).items()
        if value
        and name.endswith("_file")
        and "Secret" in repr(hints.get(name.removesuffix("_file")))
    }


def check_config(args: argparse.Namespace, tmp_path: Path, where: str) -> None:
    """The parsed flags also build a valid config (secret files replaced by a real file)."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    fake = copy.copy(args)
    for name in secret_file_flags(args):
        setattr(fake, name, str(secret))
    fake.config = None
    try:
        config_from_args(fake, {})
    except ConfigError as exc:
        pytest.fail(f"{where}: flags parse but do not make a valid config: {exc}")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def corral_ports(args: argparse.Namespace) -> dict[str, int]:
    """What a parsed corral command serves: 'api' (gRPC or HTTP) and 'metrics' ports."""
    ports: dict[str, int] = {}
    if args.command in ("controlplane", "edge") and args.listen:
        ports["api"] = port_of(args.listen)
    if args.command == "edge" and args.listen:
        ports["metrics"] = port_of(args.listen)  # /metrics beside the API
    if getattr(args, "metrics_listen", None):
        ports["metrics"] = port_of(args.metrics_listen)
    return ports


# ---------------------------------------------------------------- every YAML file


def all_yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def test_deploy_has_the_promised_files() -> None:
    """Compose, Kubernetes, systemd, Prometheus, Dockerfile and the guide are all there."""
    for relative in (
        "README.md",
        "Dockerfile",
        "corral.example.yaml",
        "compose/docker-compose.yml",
        "compose/nginx.conf",
        "compose/make-secrets.sh",
        "prometheus/prometheus.yml",
        "prometheus/prometheus-kubernetes.yml",
        "systemd/corral-agent@.service",
        "systemd/corral-edge.service",
        "systemd/corral-controlplane.service",
        "k8s/kustomization.yaml",
    ):
        assert (DEPLOY / relative).is_file(), relative


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    """Every YAML file under deploy/ parses (all documents of multi-document files)."""
    for doc in load_docs(path):
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("doc", k8s_docs(), ids=k8s_id)
def test_k8s_manifest_matches_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    """Each manifest validates strictly (unknown fields refused) against the Kubernetes schema."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_schema_check_catches_mistakes() -> None:
    """The schema check is strict: a misspelt field and a wrong type are refused."""
    deployment = next(d for d in workloads() if d["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["replica"] = misspelt["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, K8S_VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)


@pytest.mark.parametrize("doc", k8s_docs(), ids=k8s_id)
def test_k8s_manifest_has_identity(doc: dict[str, Any]) -> None:
    """apiVersion, kind, metadata.name, the corral namespace and the part-of label."""
    assert doc.get("apiVersion") and doc.get("kind")
    meta = doc["metadata"]
    assert meta.get("name")
    if doc["kind"] != "Namespace":
        assert meta.get("namespace") == "corral", k8s_id(doc)
    assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "corral", k8s_id(doc)


def test_k8s_has_every_part_of_the_topology() -> None:
    """Edge Deployment+Service+HPA, control plane (2 replicas)+Service, agents, etcd (3)."""
    found = {k8s_id(d): d for d in k8s_docs()}
    for name in (
        "Deployment/corral-edge",
        "Service/corral-edge",
        "HorizontalPodAutoscaler/corral-edge",
        "Deployment/corral-controlplane",
        "Service/corral-controlplane",
        "StatefulSet/etcd",
        "Service/etcd",
        "DaemonSet/ollama",
        "Deployment/vllm-qwen",
    ):
        assert name in found, name
    assert found["Deployment/corral-controlplane"]["spec"]["replicas"] == 2
    assert found["StatefulSet/etcd"]["spec"]["replicas"] == 3
    assert found["Service/etcd"]["spec"]["clusterIP"] == "None"
    assert found["StatefulSet/etcd"]["spec"]["serviceName"] == "etcd"
    # Agents: a sidecar in the vLLM pods, and one per node beside Ollama.
    for name in ("Deployment/vllm-qwen", "DaemonSet/ollama"):
        assert "agent" in {c["name"] for c in containers(found[name])}


@pytest.mark.parametrize("workload", workloads(), ids=k8s_id)
def test_k8s_workload_selector_matches_template(workload: dict[str, Any]) -> None:
    """A workload's selector selects its own pod template's labels."""
    selector = workload["spec"]["selector"]["matchLabels"]
    assert labels_match(selector, workload["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("workload", workloads(), ids=k8s_id)
def test_k8s_containers_are_pinned_probed_and_sized(workload: dict[str, Any]) -> None:
    """Every container: pinned image, readiness and liveness probes on real ports, requests."""
    for container in containers(workload):
        where = f"{k8s_id(workload)} container {container['name']}"
        assert_pinned(container["image"], where)
        if container["image"].startswith(CORRAL_IMAGE):
            assert image_tag(container["image"]) == __version__, where
        assert container.get("resources", {}).get("requests"), f"{where}: no resource requests"
        ports = container.get("ports", [])
        names = {p["name"] for p in ports if "name" in p}
        numbers = {p["containerPort"] for p in ports}
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            assert probe, f"{where}: no {kind}"
            handler = next(probe[h] for h in ("httpGet", "grpc", "tcpSocket", "exec") if h in probe)
            port = handler.get("port")
            if port is not None:
                assert port in names or port in numbers, f"{where}: {kind} port {port!r}"


def test_k8s_controlplane_and_edge_probes_are_the_right_ones() -> None:
    """Control plane ready on gRPC health; edges ready on /readyz and live on /healthz."""
    by_name = {k8s_id(w): w for w in workloads()}
    [cp] = containers(by_name["Deployment/corral-controlplane"])
    assert cp["readinessProbe"]["grpc"]["port"] == 7701
    [edge] = containers(by_name["Deployment/corral-edge"])
    assert edge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/healthz"


def _workload_ports(workload: dict[str, Any]) -> tuple[set[str], set[int]]:
    names: set[str] = set()
    numbers: set[int] = set()
    for container in containers(workload):
        for p in container.get("ports", []):
            numbers.add(p["containerPort"])
            if "name" in p:
                names.add(p["name"])
    return names, numbers


@pytest.mark.parametrize("service", [d for d in k8s_docs() if d["kind"] == "Service"], ids=k8s_id)
def test_k8s_service_selects_a_workload_and_its_ports(service: dict[str, Any]) -> None:
    """A Service's selector matches some workload, and its targetPorts exist there."""
    selector = service["spec"]["selector"]
    matched = [
        w
        for w in workloads()
        if labels_match(selector, w["spec"]["template"]["metadata"]["labels"])
    ]
    assert matched, f"{k8s_id(service)} selects no workload"
    for workload in matched:
        names, numbers = _workload_ports(workload)
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in names or target in numbers, (
                f"{k8s_id(service)} targetPort {target!r} not in {k8s_id(workload)}"
            )


@pytest.mark.parametrize(
    "doc",
    [d for d in k8s_docs() if d["kind"] in ("PodDisruptionBudget", "HorizontalPodAutoscaler")],
    ids=k8s_id,
)
def test_k8s_pdb_and_hpa_point_at_workloads(doc: dict[str, Any]) -> None:
    """PodDisruptionBudgets select a workload's pods; the HPA scales an existing Deployment."""
    if doc["kind"] == "PodDisruptionBudget":
        selector = doc["spec"]["selector"]["matchLabels"]
        assert any(
            labels_match(selector, w["spec"]["template"]["metadata"]["labels"]) for w in workloads()
        ), k8s_id(doc)
    else:
        ref = doc["spec"]["scaleTargetRef"]
        assert f"{ref['kind']}/{ref['name']}" in {k8s_id(w) for w in workloads()}


def test_k8s_every_workload_has_a_pdb() -> None:
    """Edges, control plane and etcd are protected by PodDisruptionBudgets."""
    pdbs = [
        d["spec"]["selector"]["matchLabels"]
        for d in k8s_docs()
        if d["kind"] == "PodDisruptionBudget"
    ]
    for name in ("Deployment/corral-edge", "Deployment/corral-controlplane", "StatefulSet/etcd"):
        workload = next(w for w in workloads() if k8s_id(w) == name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(labels_match(s, labels) for s in pdbs), name


def _secrets() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in k8s_docs()
        if d["kind"] == "Secret"
    }


def _configmaps() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d.get("data", {}))
        for d in k8s_docs()
        if d["kind"] == "ConfigMap"
    }


@pytest.mark.parametrize("workload", workloads(), ids=k8s_id)
def test_k8s_referenced_secrets_and_volumes_exist(workload: dict[str, Any]) -> None:
    """Secret/ConfigMap volumes and env references name objects and keys that exist."""
    secrets, configmaps = _secrets(), _configmaps()
    spec = pod_spec(workload)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    for volume in volumes.values():
        for kind, known, key in (
            ("secret", secrets, "secretName"),
            ("configMap", configmaps, "name"),
        ):
            if kind in volume:
                name = volume[kind][key]
                assert name in known, f"{k8s_id(workload)}: {kind} {name!r} is not in deploy/k8s"
                for item in volume[kind].get("items", []):
                    assert item["key"] in known[name], f"{name} has no key {item['key']!r}"
    for container in containers(workload):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes or mount["name"] in claims, mount
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), env
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                assert ref["key"] in configmaps.get(ref["name"], set()), env


def _file_in_mounts(path: str, container: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether path is a file a mounted Secret volume provides in this container."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    secrets = _secrets()
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        relative = path[len(prefix) :]
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        items = secret.get("items")
        provided = {i["path"] for i in items} if items else secrets[secret["secretName"]]
        if relative in provided:
            return True
    return False


def k8s_corral_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads():
        for container in containers(workload):
            if container["image"].startswith(CORRAL_IMAGE):
                yield workload, container


def test_k8s_corral_command_lines_parse(tmp_path: Path) -> None:
    """Every corral container's args parse with the real CLI and make a valid config."""
    seen = set()
    for workload, container in k8s_corral_containers():
        where = f"{k8s_id(workload)} container {container['name']}"
        assert "command" not in container, f"{where}: the image's entrypoint is corral"
        args = parse_corral(container["args"], where)
        seen.add(args.command)
        check_config(args, tmp_path, where)
        # Files named by flags are really mounted (secrets as files, never env).
        for name, value in vars(args).items():
            if name.endswith("_file") and value:
                assert _file_in_mounts(value, container, pod_spec(workload)), (
                    f"{where}: --{name.replace('_', '-')} {value} is not a mounted Secret file"
                )
        # The ports a component serves are declared on its container.
        declared = {p["containerPort"] for p in container.get("ports", [])}
        for port in corral_ports(args).values():
            assert port in declared, f"{where}: serves :{port}, not declared"
        # A state dir on a read-only root filesystem must be a mounted volume.
        if getattr(args, "state_dir", None):
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert args.state_dir in mounts, where
    assert seen == {"controlplane", "edge", "agent"}


def test_k8s_clients_point_at_services_that_exist() -> None:
    """--controlplane and --etcd addresses name Services (and ports) defined in deploy/k8s."""
    services = {
        d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
        for d in k8s_docs()
        if d["kind"] == "Service"
    }
    statefulsets = {d["metadata"]["name"]: d for d in workloads() if d["kind"] == "StatefulSet"}
    for workload, container in k8s_corral_containers():
        args = parse_corral(container["args"], k8s_id(workload))
        for address in getattr(args, "controlplane", None) or ():
            host, port = address.rsplit(":", 1)
            assert int(port) in services.get(host, set()), address
        for url in getattr(args, "etcd_endpoints", None) or ():
            host = urlsplit(url).hostname or ""
            pod, _, service = host.partition(".")
            assert int(urlsplit(url).port or 0) in services[service], url
            ordinal = int(pod.rsplit("-", 1)[1])
            assert pod.startswith(statefulsets[service]["metadata"]["name"] + "-")
            assert ordinal < statefulsets[service]["spec"]["replicas"], url


def test_k8s_agents_register_a_reachable_unique_address() -> None:
    """Agents register the pod IP (not localhost) under a per-pod or per-node name."""
    for workload, container in k8s_corral_containers():
        args = parse_corral(container["args"], k8s_id(workload))
        if args.command != "agent":
            continue
        assert "$(POD_IP)" in args.backend, k8s_id(workload)
        assert "$(POD_NAME)" in args.name or "$(NODE_NAME)" in args.name
        env = {e["name"] for e in container["env"]}
        for var in re.findall(r"\$\((\w+)\)", " ".join(container["args"])):
            assert var in env, f"{k8s_id(workload)}: $({var}) is not defined"


def test_k8s_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml lists exactly the manifests in deploy/k8s/ and the Corral image."""
    [kustomization] = load_docs(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    assert kustomization["namespace"] == "corral"
    [image] = kustomization["images"]
    assert image["name"] == CORRAL_IMAGE and image["newTag"] == __version__


# ---------------------------------------------------------------- docker compose


def compose() -> dict[str, Any]:
    [doc] = load_docs(COMPOSE_FILE)
    return doc


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def compose_corral_args() -> dict[str, argparse.Namespace]:
    return {
        name: parse_corral(service["command"], f"compose service {name}")
        for name, service in compose_services().items()
        if "build" in service
    }


def etcd_flag(command: list[str], flag: str) -> str:
    [value] = [c.split("=", 1)[1] for c in command if c.startswith(f"--{flag}=")]
    return value


def test_compose_matches_the_compose_spec_schema() -> None:
    """docker-compose.yml validates against the compose-spec JSON schema."""
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / (
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    broken = copy.deepcopy(compose())
    broken["services"]["edge"]["deploy"]["replica"] = 3
    assert list(validator.iter_errors(broken)), "the schema check must refuse unknown keys"


def test_compose_has_the_whole_topology() -> None:
    """Three etcd members, two control planes, scaled edges, agents beside servers, Prometheus."""
    services = compose_services()
    args = compose_corral_args()
    etcd = [n for n, s in services.items() if s["image"].startswith("quay.io/coreos/etcd:")]
    assert sorted(etcd) == ["etcd-0", "etcd-1", "etcd-2"]
    assert sorted(n for n, a in args.items() if a.command == "controlplane") == [
        "controlplane-0",
        "controlplane-1",
    ]
    assert [n for n, a in args.items() if a.command == "edge"] == ["edge"]
    assert services["edge"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["edge"], "a published host port would stop --scale"
    agents = {n: a for n, a in args.items() if a.command == "agent"}
    for name, agent in agents.items():
        backend_host = urlsplit(agent.backend).hostname
        assert backend_host in services, f"{name} sits beside {backend_host}, not a service"
        assert backend_host in services[name]["depends_on"]
    assert {urlsplit(a.backend).hostname for a in agents.values()} == {"ollama", "vllm"}
    assert any(s["image"].startswith("prom/prometheus:") for s in services.values())


def test_compose_etcd_members_form_one_cluster() -> None:
    """Each member advertises itself under its service name, and all list the same cluster."""
    services = compose_services()
    clusters = set()
    for name in ("etcd-0", "etcd-1", "etcd-2"):
        command = services[name]["command"]
        assert etcd_flag(command, "name") == name
        assert etcd_flag(command, "initial-advertise-peer-urls") == f"http://{name}:2380"
        assert etcd_flag(command, "advertise-client-urls") == f"http://{name}:2379"
        clusters.add(etcd_flag(command, "initial-cluster"))
    [cluster] = clusters
    assert cluster == ",".join(f"etcd-{i}=http://etcd-{i}:2380" for i in range(3))


@pytest.mark.parametrize("name", sorted(compose_services()))
def test_compose_service_is_pinned_and_health_checked(name: str) -> None:
    """Every service: a pinned image and a healthcheck."""
    service = compose_services()[name]
    assert_pinned(service["image"], f"compose service {name}")
    if "build" in service:
        assert service["image"] == f"corral:{__version__}"
    assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_files_it_references_exist() -> None:
    """Build context, Dockerfile, bind-mounted files and secret files resolve to real files."""
    base = COMPOSE_FILE.parent
    for name, service in compose_services().items():
        if "build" in service:
            context = (base / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
            assert (context / "pyproject.toml").is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (base / source).exists(), f"{name}: {source}"
    script = (base / "make-secrets.sh").read_text()
    [names] = re.findall(r"for name in ([\w\- ]+); do", script)
    for secret in compose()["secrets"].values():
        path = Path(secret["file"])
        assert path.parent == Path("secrets"), secret
        assert path.name in names.split(), f"make-secrets.sh does not create {path}"
    assert (base / ".gitignore").read_text().split() == ["secrets/"]


def test_compose_corral_command_lines_parse(tmp_path: Path) -> None:
    """Every corral command in the compose file parses and makes a valid config."""
    services = compose_services()
    for name, args in compose_corral_args().items():
        check_config(args, tmp_path, f"compose service {name}")
        # Secret files are Docker secrets the service really mounts.
        mounted = set(services[name].get("secrets", []))
        for flag, value in vars(args).items():
            if flag.endswith("_file") and value:
                assert value.startswith("/run/secrets/"), f"{name}: {flag}={value}"
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}: {value}"
                assert value.removeprefix("/run/secrets/") in compose()["secrets"]


def test_compose_clients_point_at_real_listeners() -> None:
    """--controlplane and --etcd addresses name services listening on those ports."""
    services = compose_services()
    args = compose_corral_args()
    listening = {n: corral_ports(a).get("api") for n, a in args.items()}
    for name, a in args.items():
        for address in getattr(a, "controlplane", None) or ():
            host, port = address.rsplit(":", 1)
            assert args[host].command == "controlplane", f"{name} -> {address}"
            assert listening[host] == int(port), f"{name} -> {address}"
            assert host in services[name]["depends_on"] or any(
                h in services[name]["depends_on"]
                for h in listening
                if args[h].command == "controlplane"
            )
        for url in getattr(a, "etcd_endpoints", None) or ():
            parts = urlsplit(url)
            command = services[parts.hostname or ""]["command"]
            assert etcd_flag(command, "listen-client-urls").endswith(f":{parts.port}"), url


def test_compose_edges_sit_behind_one_name() -> None:
    """nginx proxies to the edge service name on the port edges listen on, with SSE unbuffered."""
    services = compose_services()
    edge_port = corral_ports(compose_corral_args()["edge"])["api"]
    conf = (COMPOSE_FILE.parent / "nginx.conf").read_text()
    assert re.search(rf"server\s+edge:{edge_port}\s+resolve;", conf)
    assert "resolver 127.0.0.11" in conf
    assert re.search(r"proxy_buffering\s+off;", conf)
    lb = next(s for s in services.values() if s["image"].startswith("nginx:"))
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert any(p.endswith(f":{edge_port}") for p in lb["ports"])


# ---------------------------------------------------------------- Prometheus


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


# ---------------------------------------------------------------- systemd


def systemd_units() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file with every key=value in order (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        current.append((key.strip(), value.strip()))
    return sections


def values(entries: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in entries if k == key]


SPECIFIERS = {"%i": "ollama", "%d": "/run/credentials/unit", "%S": "/var/lib", "%H": "host-1"}


def exec_start_argv(path: Path) -> list[str]:
    [exec_start] = values(unit_entries(path)["Service"], "ExecStart")
    for spec, value in SPECIFIERS.items():
        exec_start = exec_start.replace(spec, value)
    assert "%" not in exec_start, f"{path.name}: an unexpected specifier in {exec_start!r}"
    return shlex.split(exec_start)


@pytest.mark.parametrize("path", systemd_units(), ids=lambda p: p.name)
def test_systemd_unit_is_ini_with_the_three_sections(path: Path) -> None:
    """Each unit reads as INI, with [Unit], [Service] and [Install] and their essentials."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(path.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    entries = unit_entries(path)
    assert values(entries["Unit"], "Description")
    assert values(entries["Install"], "WantedBy") == ["multi-user.target"]
    assert values(entries["Service"], "Restart")


@pytest.mark.parametrize("path", systemd_units(), ids=lambda p: p.name)
def test_systemd_exec_start_uses_real_flags(path: Path, tmp_path: Path) -> None:
    """ExecStart runs corral with flags the real CLI accepts, and credentials it loads."""
    argv = exec_start_argv(path)
    assert Path(argv[0]).name == "corral" and argv[0].startswith("/")
    args = parse_corral(argv[1:], path.name)
    assert path.name.startswith(f"corral-{args.command}")
    check_config(args, tmp_path, path.name)
    credentials = {
        v.split(":", 1)[0] for v in values(unit_entries(path)["Service"], "LoadCredential")
    }
    for flag, value in secret_file_flags(args).items():
        assert value.startswith(SPECIFIERS["%d"] + "/"), f"{path.name}: {flag} not a credential"
        assert value.rsplit("/", 1)[1] in credentials, f"{path.name}: {value} is not loaded"


@pytest.mark.parametrize("path", systemd_units(), ids=lambda p: p.name)
def test_systemd_unit_is_hardened(path: Path) -> None:
    """Dynamic unprivileged user, no capabilities, read-only system, syscall filter."""
    service = dict(unit_entries(path)["Service"])
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictNamespaces": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == value, f"{path.name}: {key}"
    assert values(unit_entries(path)["Service"], "SystemCallFilter")


def test_systemd_agent_template_takes_its_settings_per_instance() -> None:
    """corral-agent@ is a template: its env file and backend name come from the instance."""
    path = SYSTEMD / "corral-agent@.service"
    service = unit_entries(path)["Service"]
    assert values(service, "EnvironmentFile") == ["/etc/corral/agent-%i.env"]
    argv = exec_start_argv(path)
    assert parse_corral(argv[1:], path.name).name == SPECIFIERS["%i"]


def test_systemd_agent_env_example_is_a_valid_agent_config() -> None:
    """agent.env.example holds only CORRAL_AGENT_* keys, and they load as an agent config."""
    environ = {}
    for line in (SYSTEMD / "agent.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.startswith("CORRAL_AGENT_"), key
            environ[key] = value
    agent = load(config_file=None, environ=environ).agent
    assert agent.backend.startswith("http://")
    assert agent.metrics_listen is not None


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd itself accepts the units (with ExecStart pointed at this checkout's corral)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    corral = shutil.which("corral", path=str(Path(sys.executable).parent))
    assert corral is not None
    copies = []
    for path in systemd_units():
        name = path.name.replace("@.service", "@test.service")
        text = path.read_text().replace("/opt/corral/bin/corral", corral)
        (tmp_path / name).write_text(text)
        copies.append(str(tmp_path / name))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


# ---------------------------------------------------------------- the image


def test_dockerfile_is_pinned_and_copies_what_exists() -> None:
    """Pinned python:3.11 slim base, COPY sources exist, non-root user, corral entrypoint."""
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"(?m)^FROM\s+(\S+)", text)
    assert bases
    for base in bases:
        if base == "build":
            continue
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    for line in re.findall(r"(?m)^COPY\s+(?!--from)(.+)$", text):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    assert re.search(r"(?m)^USER\s+10001", text)
    assert re.search(r'(?m)^ENTRYPOINT \["corral"\]', text)
    exposed = {int(p) for p in re.findall(r"(?m)^EXPOSE\s+(.+)$", text)[0].split()}
    assert {7700, 7701, 9701, 9702} <= exposed
    # The Kubernetes pods run as the same uid the image creates.
    for workload, container in k8s_corral_containers():
        context = {
            **pod_spec(workload).get("securityContext", {}),
            **container.get("securityContext", {}),
        }
        assert context.get("runAsUser") == 10001, k8s_id(workload)
        assert context.get("runAsNonRoot") is True


def test_example_config_sections_are_the_real_ones() -> None:
    """The documented example config names the same sections as corral.config."""
    [doc] = load_docs(DEPLOY / "corral.example.yaml")
    assert set(doc) == set(SECTIONS)


# ---------------------------------------------------------------- agents the control plane accepts

# What Kubernetes substitutes for $(VAR) in the manifests, as it might at run time.
K8S_VARS = {
    "POD_NAME": "vllm-qwen-6d9f7c5b8-x2k4q",
    "POD_IP": "10.42.0.17",
    "NODE_NAME": "gpu-node-a",
}


def agent_configs(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """Every agent configuration deploy/ defines, as the agent would load it."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")

    def configured(args: argparse.Namespace, environ: dict[str, str]) -> Any:
        fake = copy.copy(args)
        for name in secret_file_flags(args):
            setattr(fake, name, str(secret))
        fake.config = None
        return config_from_args(fake, environ).agent

    for name, args in compose_corral_args().items():
        if args.command == "agent":
            yield f"compose {name}", configured(args, {})
    for workload, container in k8s_corral_containers():
        argv = [
            re.sub(r"\$\((\w+)\)", lambda m: K8S_VARS[m.group(1)], a) for a in container["args"]
        ]
        args = parse_corral(argv, k8s_id(workload))
        if args.command == "agent":
            yield k8s_id(workload), configured(args, {})
    environ = {}
    for line in (SYSTEMD / "agent.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            environ[key] = value
    argv = exec_start_argv(SYSTEMD / "corral-agent@.service")
    yield "systemd corral-agent@ollama", configured(parse_corral(argv[1:], "systemd"), environ)


def test_every_agent_in_deploy_registers_a_spec_the_control_plane_accepts(tmp_path: Path) -> None:
    """Backend name, URL, type, priority, weight and labels pass the control plane's checks."""
    seen = 0
    for where, agent in agent_configs(tmp_path):
        kind = "openai" if agent.type == "auto" else agent.type
        spec = types_pb2.BackendSpec(
            name=agent.name,
            url=agent.backend,
            type=types_pb2.BackendType.Value(f"BACKEND_TYPE_{kind.upper()}"),
            priority=agent.priority,
            weight=agent.weight,
            labels=dict(agent.labels),
            max_concurrency=agent.max_concurrency,
        )
        try:
            check_spec(spec)
        except InvalidArgumentError as exc:
            pytest.fail(f"{where}: the control plane would refuse {spec}: {exc}")
        assert agent.name, f"{where}: name the backend explicitly"
        seen += 1
    assert seen == 5  # compose: ollama, vllm; k8s: sidecar, DaemonSet; systemd template


# ---------------------------------------------------------------- etcd flags


def etcd_command_lines() -> Iterator[tuple[str, list[str]]]:
    for name, service in compose_services().items():
        if service["image"].startswith("quay.io/coreos/etcd:"):
            yield f"compose {name}", service["command"]
    for workload in workloads():
        for container in containers(workload):
            if container["image"].startswith("quay.io/coreos/etcd:"):
                yield k8s_id(workload), [*container["command"], *container["args"]]


def test_etcd_flags_are_real_etcd_flags() -> None:
    """Every flag given to etcd in deploy/ is one the real etcd 3.5 binary documents."""
    result = subprocess.run(
        [etcd_binary(), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    known = set(re.findall(r"(?m)^\s+(--[a-z0-9-]+)", result.stdout + result.stderr))
    assert "--initial-cluster" in known  # the help text was read
    lines = list(etcd_command_lines())
    assert len(lines) == 4  # three compose members and the StatefulSet
    for where, argv in lines:
        assert argv[0] == "/usr/local/bin/etcd", where
        for arg in argv[1:]:
            flag = arg.split("=", 1)[0]
            assert flag in known, f"{where}: etcd has no flag {flag}"


def test_guide_corral_commands_parse() -> None:
    """Every `corral ...` command in deploy/README.md's code blocks parses with the real CLI."""
    commands = [
        line.strip()
        for line in (DEPLOY / "README.md").read_text().splitlines()
        if line.startswith("    ") and line.strip().startswith("corral ")
    ]
    assert commands
    for command in commands:
        parse_corral(shlex.split(command)[1:], "deploy/README.md")
