"""deploy/: Valkey for limits and budgets shared by the edges as an option (compose override,
k8s overlay)."""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import urlsplit

from corral.cli import config_from_args
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

OVERRIDE = DEPLOY / "compose" / "valkey.yml"
OVERLAY = K8S_OVERLAYS / "valkey"


def test_compose_override_is_valid_and_keeps_the_edges_flags() -> None:
    """The merged compose file is valid; its edges are the base's (same flags) plus the config."""
    merged = checked_override(OVERRIDE, "/etc/corral/edge-limits.yaml")
    edge = merged["services"]["edge"]
    [config] = edge["configs"]
    config_file = OVERRIDE.parent / merged["configs"][config["source"]]["file"]
    [limits_config] = load_docs(config_file)
    url = urlsplit(limits_config["edge"]["limits"]["valkey_url"])
    assert url.hostname in merged["services"] and url.port == 6379
    assert edge["depends_on"][url.hostname] == {"condition": "service_healthy"}


def test_k8s_overlay_is_wired(tmp_path: Path) -> None:
    """The rendered overlay: the base's edges plus the limits config, which names the Service."""
    [kustomization] = load_docs(OVERLAY / "kustomization.yaml")
    assert (OVERLAY / kustomization["resources"][0]).resolve() == K8S_BASE
    by_id = {k8s_id(d): d for d in kustomize_build(OVERLAY)}
    pod = by_id["Deployment/corral-edge"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = parse_corral(container["args"], "k8s edge with the valkey overlay")
    [base_edge] = [d for d in k8s_docs() if k8s_id(d) == "Deployment/corral-edge"]
    base_args = parse_corral(base_edge["spec"]["template"]["spec"]["containers"][0]["args"], "")
    base_args.config = args.config
    assert vars(args) == vars(base_args)  # the same edges, plus the limits config
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir, config_name = args.config.rsplit("/", 1)
    configmap = by_id[f"ConfigMap/{volumes[mounts[config_dir]]['configMap']['name']}"]
    config_file = tmp_path / config_name
    config_file.write_text(configmap["data"][config_name])
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    fake = copy.copy(args)
    for name in ("api_keys_file", "controlplane_token_file"):
        setattr(fake, name, str(secret))
    fake.config = str(config_file)
    url = urlsplit(config_from_args(fake, {}).edge.limits.valkey_url)
    service = by_id[f"Service/{url.hostname}"]
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
