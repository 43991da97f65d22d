"""deploy/compose/: the docker compose file, checked offline: the compose-spec schema, the
whole topology, one etcd cluster, pinned and health-checked services, files it references,
`corral` command lines, clients pointing at real listeners, edges behind one name.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from corral import __version__
from tests.support.deploy import (
    COMPOSE_FILE,
    assert_pinned,
    check_config,
    compose,
    compose_corral_args,
    compose_services,
    corral_ports,
    etcd_flag,
)


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
