"""deploy/k8s/: the Kubernetes manifests, checked offline: schemas, identity, topology,
selectors, pinned and probed containers, services, PDBs and HPAs, secrets and volumes,
`corral` command lines, clients and agents' addresses, the kustomizations (the base and its
overlays, built by the real kubectl).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from corral import __version__
from tests.support.deploy import (
    CORRAL_IMAGE,
    K8S,
    K8S_BASE,
    K8S_OVERLAYS,
    K8S_VERSION,
    WORKLOAD_KINDS,
    assert_pinned,
    check_config,
    containers,
    corral_ports,
    image_tag,
    k8s_corral_containers,
    k8s_docs,
    k8s_files,
    k8s_id,
    kustomizations,
    kustomize_build,
    load_docs,
    parse_corral,
    pod_spec,
    workloads,
)


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


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


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
    """The base's kustomization lists exactly its manifests, and the Corral image."""
    [kustomization] = load_docs(K8S_BASE / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    assert kustomization["namespace"] == "corral"
    [image] = kustomization["images"]
    assert image["name"] == CORRAL_IMAGE and image["newTag"] == __version__


def test_k8s_kustomizations_are_the_base_and_its_overlays() -> None:
    """deploy/k8s/ holds the base and, beside it, the overlays on it (valkey, postgres)."""
    assert kustomizations() == [
        K8S_BASE,
        K8S_OVERLAYS / "postgres",
        K8S_OVERLAYS / "valkey",
    ]
    for overlay in kustomizations()[1:]:
        [kustomization] = load_docs(overlay / "kustomization.yaml")
        bases = [r for r in kustomization["resources"] if (overlay / r).is_dir()]
        assert [(overlay / r).resolve() for r in bases] == [K8S_BASE], overlay


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_k8s_kustomization_builds(directory: Path) -> None:
    """`kubectl kustomize` renders each one (as `kubectl apply -k` would), strictly valid."""
    rendered = kustomize_build(directory)
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"].get("namespace", "corral") == "corral", k8s_id(doc)
    ids = [k8s_id(d) for d in rendered]
    assert len(ids) == len(set(ids)), ids
    own = {
        k8s_id(d)
        for name in load_docs(directory / "kustomization.yaml")[0]["resources"]
        if (directory / name).is_file()
        for d in load_docs(directory / name)
    }
    base = {k8s_id(d) for d in k8s_docs()}
    assert set(ids) == own | base, directory


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_k8s_secrets_reach_containers_as_files(directory: Path) -> None:
    """No container takes a Secret through its environment: Secrets are mounted files."""
    for doc in kustomize_build(directory):
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for container in containers(doc):
            where = f"{k8s_id(doc)} container {container['name']}"
            for env in container.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {}), f"{where}: {env['name']}"
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, where
