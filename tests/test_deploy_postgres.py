"""deploy/: PostgreSQL for usage records as an option (compose override, k8s overlay)."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from corral.cli import config_from_args
from corral.config import load
from tests.support.deploy import (
    DEPLOY,
    K8S,
    K8S_VERSION,
    compose,
    k8s_docs,
    load_docs,
    parse_corral,
)

OVERRIDE = DEPLOY / "compose" / "postgres.yml"
OVERLAY = K8S / "postgres"


def merged_compose() -> dict[str, Any]:
    """docker-compose.yml with postgres.yml on top, as compose merges them (mappings merged,
    `command` replaced, secrets and depends_on added)."""
    base = copy.deepcopy(compose())
    [override] = load_docs(OVERRIDE)
    for top, value in override.items():
        if top != "services":
            base.setdefault(top, {}).update(value)
    for name, service in override["services"].items():
        target = base["services"].setdefault(name, {})
        for key, value in service.items():
            if key == "secrets":
                target[key] = sorted(set(target.get(key, [])) | set(value))
            elif key == "depends_on":
                target.setdefault(key, {}).update(value)
            else:
                target[key] = value
    return base


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
    merged = merged_compose()
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / (
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(merged)]
    assert not errors, errors
    edge = merged["services"]["edge"]
    args = parse_corral(edge["command"], "compose edge with postgres.yml")
    base_args = parse_corral(compose()["services"]["edge"]["command"], "compose edge")
    assert args.config == "/etc/corral/edge-usage.yaml"
    [config] = edge["configs"]
    assert config["target"] == args.config
    base_args.config = args.config
    assert vars(args) == vars(base_args)  # the same edges, plus the usage config
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


def apply_json_patch(doc: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """The `add` operations of an RFC 6902 patch (what the overlay uses)."""
    out = copy.deepcopy(doc)
    for op in patch:
        assert op["op"] == "add", op
        *parents, last = op["path"].strip("/").split("/")
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if last == "-":
            node.append(op["value"])
        else:
            node[last] = op["value"]
    return out


def test_k8s_overlay_is_valid_and_wired(tmp_path: Path) -> None:
    """The overlay and edge Deployment pass the schema; the flag parses, config and DSN mount."""
    [kustomization] = load_docs(OVERLAY / "kustomization.yaml")
    assert kustomization["resources"] == ["../", "postgres.yaml"]
    docs = load_docs(OVERLAY / "postgres.yaml")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by_id = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    [patch_ref] = kustomization["patches"]
    patch = yaml.safe_load(patch_ref["patch"])
    edge = next(d for d in k8s_docs() if d["kind"] == "Deployment" and
                d["metadata"]["name"] == patch_ref["target"]["name"])  # fmt: skip
    patched = apply_json_patch(edge, patch)
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    container = patched["spec"]["template"]["spec"]["containers"][0]
    args = parse_corral(container["args"], "k8s edge with the postgres overlay")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in patched["spec"]["template"]["spec"]["volumes"]}
    config_dir, config_name = args.config.rsplit("/", 1)
    configmap = by_id[f"ConfigMap/{volumes[mounts[config_dir]]['configMap']['name']}"]
    usage_file = tmp_path / config_name
    usage_file.write_text(configmap["data"][config_name])
    dsn_file = re.search(r"postgres_dsn_file: (\S+)", usage_file.read_text())[1]
    dsn_dir, dsn_name = dsn_file.rsplit("/", 1)
    secret_volume = volumes[mounts[dsn_dir]]["secret"]
    secret = by_id[f"Secret/{secret_volume['secretName']}"]
    assert dsn_name in {i["path"] for i in secret_volume["items"]}
    assert secret["stringData"]["usage-dsn"].startswith("postgresql://")
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
