"""deploy/: every agent it defines (compose, Kubernetes, the systemd template) registers a
backend spec the control plane accepts.
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.errors import InvalidArgumentError
from controlplane.validation import check_spec
from corral.cli import config_from_args
from corral.v1 import types_pb2
from tests.support.deploy import (
    SYSTEMD,
    compose_corral_args,
    exec_start_argv,
    k8s_corral_containers,
    k8s_id,
    parse_corral,
    secret_file_flags,
)

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
