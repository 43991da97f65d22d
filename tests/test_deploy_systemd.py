"""deploy/systemd/: the systemd units, checked offline: INI with the three sections, real
`corral` flags in ExecStart, hardening, the agent template's per-instance settings and its
env example, and `systemd-analyze verify`.
"""

from __future__ import annotations

import configparser
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.cli import build_parser, config_from_args
from corral.config import load
from corral.usage_cli import with_default_usage_path
from edge.gateway.sinks import sqlite_path
from tests.support.deploy import (
    DEPLOY,
    SPECIFIERS,
    SYSTEMD,
    check_config,
    exec_start_argv,
    parse_corral,
    secret_file_flags,
    unit_entries,
    values,
)


def systemd_units() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


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
    # A required tool of the suite (./dev test installs it): missing is a failure, never a skip.
    assert analyze is not None, (
        "systemd-analyze is not installed: run ./dev test (as root it installs Debian's "
        "systemd package) or apt-get install systemd"
    )
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


def test_systemd_edge_and_usage_report_share_the_state_dir(tmp_path: Path) -> None:
    """The edge unit's records are in its StateDirectory, where `corral usage --config` looks."""
    path = SYSTEMD / "corral-edge.service"
    args = parse_corral(exec_start_argv(path)[1:], path.name)
    # The guide installs deploy/corral.example.yaml as the config file the unit names.
    install = re.search(
        rf"install -m \d+ deploy/corral\.example\.yaml {re.escape(args.config)}",
        (DEPLOY / "README.md").read_text(),
    )
    assert install, f"deploy/README.md does not install the example as {args.config}"
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    edge = copy.copy(args)
    for name in secret_file_flags(args):
        setattr(edge, name, str(secret))
    edge.config = str(DEPLOY / "corral.example.yaml")
    edge_config = config_from_args(edge, {}).edge
    [state_directory] = values(unit_entries(path)["Service"], "StateDirectory")
    assert edge_config.state_dir == f"{SPECIFIERS['%S']}/{state_directory}"
    # `corral usage --config /etc/corral/corral.yaml`, run by root in a shell on the host.
    report = build_parser().parse_args(["usage", "--config", edge.config])
    environ = {"HOME": "/root"}
    report_config = with_default_usage_path(load(config_file=report.config, environ={}), environ)
    assert sqlite_path(report_config.edge) == sqlite_path(edge_config)
    assert sqlite_path(edge_config) == f"{edge_config.state_dir}/usage.db"
