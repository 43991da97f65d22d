"""Configuration errors: bad file values, unknown or bad environment keys and missing files are
named; the CLI exits 2 with one line for each (and argparse refuses bad flag values).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.config import ConfigError, CorralConfig, load
from tests.support.config import write

# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("edge:\n  listn: 0.0.0.0:1\n", "unknown key 'listn' in section 'edge'"),
        ("edges:\n  listen: x\n", "unknown section 'edges'"),
        ("edge:\n  workers: two\n", "edge.workers: expected an integer, got 'two'"),
        ("edge:\n  workers: 1.5\n", "edge.workers: expected an integer, got 1.5"),
        ("edge:\n  workers: true\n", "edge.workers: expected an integer, got True"),
        ("edge:\n  queue_wait_seconds: soon\n", "edge.queue_wait_seconds: expected a number"),
        ("edge:\n  listen:\n", "edge.listen: expected a string, got None"),
        ("edge:\n  listen: [a, b]\n", "edge.listen: expected a string"),
        ("edge:\n  controlplane: 5\n", "edge.controlplane: expected a list, got 5"),
        ("up:\n  demo: maybe\n", "up.demo: expected true or false, got 'maybe'"),
        ("agent:\n  labels: 5\n", "agent.labels: expected key=value pairs, got 5"),
        ("agent:\n  type: mystery-server\n", "agent.type: expected one of auto, ollama"),
        ("controlplane:\n  store: redis\n", "controlplane.store: expected one of etcd, memory"),
        ("edge:\n  upstream_client: curl\n", "edge.upstream_client: expected one of fast"),
        ("edge:\n  busy_poll_us: -5\n", "edge.busy_poll_us must be between 0 and 10000"),
        ("edge: [listen]\n", "section 'edge' must be a mapping"),
        ("- edge\n", "the top level must be a mapping"),
        ("edge:\n  listen: [unclosed\n", "is not valid YAML"),
        ("edge:\n  queue_wait_seconds: .nan\n", "expected a finite number, got nan"),
        ("controlplane:\n  lease_ttl_seconds: .inf\n", "expected a finite number, got inf"),
        ("edge:\n  queue_wait_seconds: 1e400\n", "expected a finite number"),
        ("edge:\n  usage:\n    prices: [{model: m, input: -5}]\n", "input must be >= 0"),
        (
            "edge:\n  usage:\n    prices: [{model: m, input: abc}]\n",
            "config file edge.usage.prices.input: expected a number, got 'abc'",
        ),
        ("controlplane:\n  gateway:\n    audit_limit: -3\n", "audit_limit must be at least 1"),
        ("up:\n  listen: '7700'\n", "up.listen must be HOST:PORT, got '7700'"),
        ("up:\n  listen: 'h:²'\n", "up.listen must be HOST:PORT"),  # a digit, not int()'s
        ("edge:\n  cache:\n    ttl_seconds: 1e16\n", "edge.cache.ttl_seconds must be between"),
        ("edge:\n  cache:\n    rules: [{team: t, ttl_seconds: -1}]\n", "must be between 0"),
        ("up:\n  controlplane_listen: h:abc\n", "up.controlplane_listen must be HOST:PORT"),
        ("edge:\n  credentials: [sk-live-SECRETVALUE123]\n", "entry 1 is not REF=SECRET"),
    ],
)
def test_bad_file_values_name_key_and_value(tmp_path: Path, text: str, expect: str) -> None:
    """Every bad key or value in the file is a ConfigError naming it."""
    config_file = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load(config_file=config_file, environ={})
    assert expect in str(info.value)


def test_a_malformed_credential_is_named_never_shown() -> None:
    """A credentials entry without REF= is refused without its value, from a file or the env."""
    with pytest.raises(ConfigError) as info:
        load(config_file=None, environ={"CORRAL_EDGE_CREDENTIALS": "a=AAAA,BBBB"})
    assert "entry 2 is not REF=SECRET" in str(info.value) and "BBBB" not in str(info.value)


def test_unknown_environment_key_is_named() -> None:
    """A misspelt CORRAL_* variable is refused with its full name, not ignored."""
    with pytest.raises(ConfigError) as info:
        load(config_file=None, environ={"CORRAL_EDGE_LISTN": "x"})
    assert "CORRAL_EDGE_LISTN" in str(info.value)
    assert "'listn'" in str(info.value)


def test_bad_environment_value_is_named() -> None:
    """A malformed CORRAL_* value names the variable and the value."""
    with pytest.raises(ConfigError) as info:
        load(config_file=None, environ={"CORRAL_AGENT_WEIGHT": "heavy"})
    assert str(info.value) == (
        "environment CORRAL_AGENT_WEIGHT agent.weight: expected a number, got 'heavy'"
    )


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError with the path."""
    with pytest.raises(ConfigError, match=r"cannot read config file .*absent\.yaml"):
        load(config_file=str(tmp_path / "absent.yaml"), environ={})


def test_empty_config_file_is_all_defaults(tmp_path: Path) -> None:
    """An empty file (or a section left empty) means defaults."""
    assert load(config_file=write(tmp_path / "e.yaml", ""), environ={}) == CorralConfig()
    assert load(config_file=write(tmp_path / "s.yaml", "edge:\n"), environ={}) == CorralConfig()


# ---------------------------------------------------------------- the CLI's error path


CORRAL = str(Path(sys.executable).parent / "corral")


def run_corral(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CORRAL, *argv], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize("command", ["controlplane", "edge", "agent", "up"])
def test_cli_bad_config_file_exits_2_with_one_line(tmp_path: Path, command: str) -> None:
    """`corral <cmd> --config bad.yaml` exits 2 with one line naming key and value."""
    bad = write(tmp_path / "bad.yaml", f"{command}:\n  shutdown_grace_seconds: forever\n")
    if command == "up":
        bad = write(tmp_path / "bad.yaml", "up:\n  demo: forever\n")
    result = run_corral(command, "--config", bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"corral {command}: configuration error:")
    assert "'forever'" in result.stderr


def test_cli_unknown_key_and_bad_environment_exit_2(tmp_path: Path) -> None:
    """An unknown file key and a bad CORRAL_* variable are both one-line exit-2 errors."""
    bad = write(tmp_path / "bad.yaml", "edge:\n  listn: 0.0.0.0:7700\n")
    result = run_corral("edge", "--config", bad)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "unknown key 'listn' in section 'edge'" in result.stderr

    env = {"PATH": "/usr/bin:/bin", "CORRAL_AGENT_WEIGHT": "heavy"}
    result = run_corral("agent", "--backend", "http://127.0.0.1:1", env=env)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "CORRAL_AGENT_WEIGHT" in result.stderr and "'heavy'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bad_flag_value_is_refused_by_argparse() -> None:
    """Malformed flag values are refused by the parser (exit 2) before anything runs."""
    result = run_corral("agent", "--priority", "high")
    assert result.returncode == 2
    assert "--priority" in result.stderr and "Traceback" not in result.stderr
