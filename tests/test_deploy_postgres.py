"""deploy/: PostgreSQL for usage records as an option (compose override, k8s overlay)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from corral.cli import config_from_args
from corral.config import load
from tests.support.deploy import (
    DEPLOY,
    K8S_BASE,
    K8S_OVERLAYS,
    checked_override,
    k8s_docs,
    k8s_id,
    kustomize_build,
    load_docs,
    parse_corral,
)

OVERRIDE = DEPLOY / "compose" / "postgres.yml"
OVERLAY = K8S_OVERLAYS / "postgres"


def usage_config(path: Path, dsn_file: str, tmp_path: Path) -> Any:
    """The edge config a usage config file makes, its DSN file replaced by a real one."""
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://corral:x@postgres:5432/corral\n")
    text = path.read_text().replace(dsn_file, str(secret))
    fake = tmp_path / "config.yaml"
    fake.write_text(text)
    return load(config_file=str(fake), environ={}).edge.usage


def test_compose_override_is_valid_and_wired(tmp_path: Path) -> None:
    """The merged compose file is valid; edges use PostgreSQL via secrets make-secrets.sh makes."""
    merged = checked_override(OVERRIDE, "/etc/corral/edge-usage.yaml")
    edge = merged["services"]["edge"]
    [config] = edge["configs"]
    assert (OVERRIDE.parent / merged["configs"][config["source"]]["file"]).is_file()
    usage = usage_config(OVERRIDE.parent / "edge-usage.yaml", "/run/secrets/usage-dsn", tmp_path)
    assert usage.sink == "postgres" and usage.postgres_dsn is not None
    assert "usage-dsn" in edge["secrets"]
    assert merged["services"]["postgres"]["image"].split(":")[1][0].isdigit()
    script = (OVERRIDE.parent / "make-secrets.sh").read_text()
    for name in ("postgres-password", "usage-dsn"):
        assert Path(merged["secrets"][name]["file"]).name == name
        assert f"secrets/{name}" in script
    assert edge["depends_on"]["postgres"] == {"condition": "service_healthy"}


def rendered_overlay() -> dict[str, dict[str, Any]]:
    """The overlay as `kubectl kustomize` renders it, by kind/name."""
    return {k8s_id(d): d for d in kustomize_build(OVERLAY)}


def mounted_secret_file(
    path: str, pod: dict[str, Any], container: dict[str, Any]
) -> tuple[str, str]:
    """(Secret name, key) of the Secret volume item a container sees at path."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        directory, name = path.rsplit("/", 1)
        secret = volumes.get(mount["name"], {}).get("secret")
        if mount["mountPath"].rstrip("/") == directory and secret is not None:
            [key] = [i["key"] for i in secret["items"] if i["path"] == name]
            return secret["secretName"], key
    raise AssertionError(f"{container['name']}: {path} is not a file of a mounted Secret")


def test_k8s_overlay_is_valid_and_wired(tmp_path: Path) -> None:
    """The rendered overlay: the base plus postgres.yaml, edges with the config and DSN mounted."""
    [kustomization] = load_docs(OVERLAY / "kustomization.yaml")
    assert kustomization["resources"] == ["../../base", "postgres.yaml"]
    assert (OVERLAY / kustomization["resources"][0]).resolve() == K8S_BASE
    by_id = rendered_overlay()
    patched = by_id["Deployment/corral-edge"]
    container = patched["spec"]["template"]["spec"]["containers"][0]
    args = parse_corral(container["args"], "k8s edge with the postgres overlay")
    [base_edge] = [d for d in k8s_docs() if k8s_id(d) == "Deployment/corral-edge"]
    base_args = parse_corral(base_edge["spec"]["template"]["spec"]["containers"][0]["args"], "")
    base_args.config = args.config
    assert vars(args) == vars(base_args)  # the same edges, plus the usage config
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in patched["spec"]["template"]["spec"]["volumes"]}
    config_dir, config_name = args.config.rsplit("/", 1)
    configmap = by_id[f"ConfigMap/{volumes[mounts[config_dir]]['configMap']['name']}"]
    usage_file = tmp_path / config_name
    usage_file.write_text(configmap["data"][config_name])
    match = re.search(r"postgres_dsn_file: (\S+)", usage_file.read_text())
    assert match is not None
    dsn_file = match[1]
    secret_name, key = mounted_secret_file(dsn_file, patched["spec"]["template"]["spec"], container)
    secret = by_id[f"Secret/{secret_name}"]
    assert secret["stringData"][key].startswith("postgresql://")
    usage = usage_config(usage_file, dsn_file, tmp_path)
    assert usage.sink == "postgres"
    fake = copy.copy(args)
    for name in ("api_keys_file", "controlplane_token_file"):
        setattr(fake, name, str(tmp_path / "dsn"))
    fake.config = str(tmp_path / "config.yaml")
    assert config_from_args(fake, {}).edge.usage.sink == "postgres"
    service = by_id["Service/postgres"]
    assert service["spec"]["ports"][0]["port"] == 5432
    assert "@postgres:5432/" in secret["stringData"]["usage-dsn"]


def test_k8s_postgres_password_is_a_mounted_file() -> None:
    """PostgreSQL reads its password from the Secret mounted as a file (POSTGRES_PASSWORD_FILE)."""
    by_id = rendered_overlay()
    statefulset = by_id["StatefulSet/postgres"]
    pod = statefulset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert "POSTGRES_PASSWORD" not in env, "the password would be in the pod's environment"
    secret_name, key = mounted_secret_file(env["POSTGRES_PASSWORD_FILE"]["value"], pod, container)
    secret = by_id[f"Secret/{secret_name}"]["stringData"]
    # The same password the edges' DSN connects with.
    assert f"corral:{secret[key]}@postgres:5432/" in secret["usage-dsn"]
