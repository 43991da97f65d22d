"""Configuration flags cannot rot: every flag of every command maps to a config key, and the
up, agent and control-plane flags reach the config.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from corral.cli import _NOT_CONFIG, build_parser, config_from_args
from corral.config import SECTIONS, AgentConfig, ControlPlaneConfig, EdgeConfig, UpConfig
from tests.support.config import secret_fields


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_every_flag_maps_to_a_config_key(command: str) -> None:
    """Each flag of `corral <command>` lands on a field of that command's section."""
    cls = SECTIONS[command]
    fields = {f.name for f in dataclasses.fields(cls)}
    secrets = secret_fields(cls)
    dests = {
        a.dest
        for a in _subparsers()[command]._actions
        if a.dest not in _NOT_CONFIG and a.dest != "help"
    }
    assert dests  # the parser really has flags
    for dest in dests:
        assert dest in fields or (dest.endswith("_file") and dest[: -len("_file")] in secrets), (
            f"flag dest {dest!r} of `corral {command}` is not a {cls.__name__} key"
        )


def test_up_flags_reach_the_config() -> None:
    """`corral up` flags: repeated --backend, --no-discover, --demo."""
    args = build_parser().parse_args(
        ["up", "--backend", "http://h:1", "--backend", "http://h:2", "--no-discover", "--demo"]
    )
    up = config_from_args(args, {}).up
    assert up == UpConfig(backends=("http://h:1", "http://h:2"), discover=False, demo=True)


def test_agent_and_controlplane_flags_reach_the_config() -> None:
    """Typed flags (numbers, lists, choices) arrive converted in the right section."""
    agent = config_from_args(
        build_parser().parse_args(
            [
                "agent",
                "--backend",
                "http://10.0.0.5:8000",
                "--type",
                "vllm",
                "--priority",
                "3",
                "--weight",
                "2.5",
                "--max-concurrency",
                "8",
                "--controlplane",
                "cp-0:7701,cp-1:7701",
            ]
        ),
        {},
    ).agent
    assert agent == AgentConfig(
        backend="http://10.0.0.5:8000",
        type="vllm",
        priority=3,
        weight=2.5,
        max_concurrency=8,
        controlplane=("cp-0:7701", "cp-1:7701"),
    )
    cp = config_from_args(
        build_parser().parse_args(
            ["controlplane", "--store", "memory", "--etcd", "http://e:2379", "--lease-ttl", "3"]
        ),
        {},
    ).controlplane
    assert cp == ControlPlaneConfig(
        store="memory", etcd_endpoints=("http://e:2379",), lease_ttl_seconds=3.0
    )
    assert config_from_args(build_parser().parse_args(["edge"]), {}).edge == EdgeConfig()
