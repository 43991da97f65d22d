"""deploy/ as a whole, checked offline: the promised files exist, every YAML file parses, the
Dockerfile (and the extras it installs) and the example config, etcd's flags (against the real
etcd binary), the guide's `corral` commands, and the deploy files the docs name.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.config import SECTIONS
from tests.support.deploy import (
    COMPOSE_FILE,
    DEPLOY,
    ROOT,
    compose_services,
    containers,
    k8s_corral_containers,
    k8s_id,
    load_docs,
    parse_corral,
    pod_spec,
    workloads,
)
from tests.support.etcd import etcd_binary


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
        "k8s/base/kustomization.yaml",
        "k8s/overlays/valkey/kustomization.yaml",
        "k8s/overlays/postgres/kustomization.yaml",
        "compose/valkey.yml",
        "compose/postgres.yml",
    ):
        assert (DEPLOY / relative).is_file(), relative


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    """Every YAML file under deploy/ parses (all documents of multi-document files)."""
    for doc in load_docs(path):
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


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


# The package extra each usage sink needs beyond Corral's own dependencies.
SINK_EXTRAS = {"postgres": "postgres"}


def _usage_sinks(node: Any) -> Iterator[str]:
    """edge.usage.sink of every Corral config in a YAML document, in ConfigMap data too."""
    if isinstance(node, str) and "\n" in node:
        with contextlib.suppress(yaml.YAMLError):
            yield from _usage_sinks(yaml.safe_load(node))
    elif isinstance(node, list):
        for item in node:
            yield from _usage_sinks(item)
    elif isinstance(node, dict):
        edge = node.get("edge")
        if isinstance(edge, dict) and isinstance(edge.get("usage"), dict):
            yield str(edge["usage"].get("sink", "sqlite"))
        for value in node.values():
            yield from _usage_sinks(value)


def _installed_extras(dockerfile: str) -> set[str]:
    """The extras of the pip install whose prefix the final image copies (/install)."""
    assert re.search(r"(?m)^COPY --from=build /install /usr/local$", dockerfile)
    run = dockerfile.replace("\\\n", " ")
    [target] = re.findall(r"pip install [^\n&]*--prefix=/install\s+(\S+)", run)
    match = re.fullmatch(r"\.(?:\[([\w,-]*)\])?", target.strip("\"'"))
    assert match, f"the image installs {target}, not the checkout"
    return {e for e in (match[1] or "").split(",") if e}


def test_dockerfile_installs_the_extras_the_shipped_configs_need() -> None:
    """Every usage sink a shipped config uses has its extra (postgres: asyncpg) in the image."""
    sinks = {s for path in all_yaml_files() for doc in load_docs(path) for s in _usage_sinks(doc)}
    assert "postgres" in sinks  # compose/postgres.yml, k8s/overlays/postgres
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("asyncpg") for r in extras[SINK_EXTRAS["postgres"]])
    needed = {SINK_EXTRAS[s] for s in sinks if s in SINK_EXTRAS}
    installed = _installed_extras((DEPLOY / "Dockerfile").read_text())
    assert needed <= installed, f"deploy/Dockerfile installs extras {installed}, needs {needed}"


def test_example_config_sections_are_the_real_ones() -> None:
    """The documented example config names the same sections as corral.config."""
    [doc] = load_docs(DEPLOY / "corral.example.yaml")
    assert set(doc) == set(SECTIONS)


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


# ---------------------------------------------------------------- the docs


def deployment_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), DEPLOY / "README.md"]


@pytest.mark.parametrize("doc", deployment_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_deploy_files_and_options_that_exist(doc: Path) -> None:
    """Paths under deploy/, compose files and profiles, and `kubectl apply -k` dirs all exist."""
    text = doc.read_text()
    where = doc.relative_to(ROOT)
    for path in re.findall(r"deploy/[\w./@*-]*[\w/*]", text):
        if "/secrets/" in path:
            continue  # made by make-secrets.sh
        found = list(ROOT.glob(path)) if "*" in path else [ROOT / path]
        assert found and all(p.exists() for p in found), f"{where}: no {path}"
    if doc.parent == DEPLOY:
        for link in re.findall(r"\]\(([^)#]+)\)", text):
            assert (DEPLOY / link).exists(), f"{where}: a link to {link}, which is not there"
    profiles = {p for s in compose_services().values() for p in s.get("profiles", [])}
    for profile in re.findall(r"--profile\s+([\w-]+)", text):
        assert profile in profiles, f"{where}: docker-compose.yml has no profile {profile}"
    for line in text.splitlines():
        if "docker compose" in line:
            for name in re.findall(r"\s-f\s+([\w.-]+)", line):
                assert (COMPOSE_FILE.parent / name).is_file(), f"{where}: no compose file {name}"
    for directory in re.findall(r"kubectl apply -k\s+([\w./-]*\w)", text):
        assert (ROOT / directory / "kustomization.yaml").is_file(), f"{where}: -k {directory}"
