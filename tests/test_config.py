"""Configuration: YAML, CORRAL_* environment and flags, secrets, errors, the example file."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cli import _NOT_CONFIG, build_parser, config_from_args
from corral.config import (
    SECTIONS,
    AgentConfig,
    ConfigError,
    ControlPlaneConfig,
    CorralConfig,
    EdgeConfig,
    ModelAliasConfig,
    Secret,
    UpConfig,
    load,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "corral.example.yaml"
CORRAL = str(Path(sys.executable).parent / "corral")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def secret_fields(cls: type[Any]) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {name for name, hint in hints.items() if "Secret" in repr(hint)}


# ---------------------------------------------------------------- sources and precedence


def test_defaults_without_any_source() -> None:
    """No file, no environment, no flags: the dataclass defaults."""
    assert load(config_file=None, environ={}) == CorralConfig()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    """Each source overrides the weaker one key by key; untouched keys keep the file's value."""
    config_file = write(
        tmp_path / "c.yaml",
        "edge:\n  listen: 0.0.0.0:1000\n  workers: 2\n  queue_depth: 7\n",
    )
    from_file = load(config_file=config_file, environ={})
    assert (from_file.edge.listen, from_file.edge.workers) == ("0.0.0.0:1000", 2)

    environ = {"CORRAL_EDGE_LISTEN": "0.0.0.0:2000", "CORRAL_EDGE_WORKERS": "3"}
    from_env = load(config_file=config_file, environ=environ)
    assert (from_env.edge.listen, from_env.edge.workers) == ("0.0.0.0:2000", 3)

    flags = {"edge": {"listen": "0.0.0.0:3000", "workers": None}}
    from_flags = load(config_file=config_file, environ=environ, flags=flags)
    assert from_flags.edge.listen == "0.0.0.0:3000"
    assert from_flags.edge.workers == 3  # a flag left unset (None) does not override
    assert from_flags.edge.queue_depth == 7


def test_cli_flags_override_environment_and_file(tmp_path: Path) -> None:
    """Parsed `corral edge` flags win over CORRAL_EDGE_* and the YAML file."""
    config_file = write(tmp_path / "c.yaml", "edge:\n  controlplane: [a:1]\n  workers: 2\n")
    args = build_parser().parse_args(
        ["edge", "--config", config_file, "--controlplane", "b:1, c:2", "--workers", "4"]
    )
    config = config_from_args(
        args, {"CORRAL_EDGE_CONTROLPLANE": "d:1", "CORRAL_EDGE_EDGE_ID": "e9"}
    )
    assert config.edge.controlplane == ("b:1", "c:2")
    assert config.edge.workers == 4
    assert config.edge.edge_id == "e9"


def test_environment_lists_numbers_and_booleans() -> None:
    """Environment text becomes lists (comma-separated), numbers, booleans and None."""
    config = load(
        config_file=None,
        environ={
            "CORRAL_CONTROLPLANE_ETCD_ENDPOINTS": "http://a:2379, http://b:2379,",
            "CORRAL_CONTROLPLANE_LEASE_TTL_SECONDS": "4.5",
            "CORRAL_CONTROLPLANE_METRICS_LISTEN": "",
            "CORRAL_UP_DISCOVER": "no",
            "CORRAL_UP_DEMO": "ON",
            "CORRAL_EDGE_SESSION_HEADERS": "X-A,X-B",
            "CORRAL_AGENT_PRIORITY": "-2",
            "UNRELATED": "ignored",
            "CORRAL_LOG_LEVEL": "DEBUG",  # not a section: belongs to the CLI
        },
    )
    assert config.controlplane.etcd_endpoints == ("http://a:2379", "http://b:2379")
    assert config.controlplane.lease_ttl_seconds == 4.5
    assert config.controlplane.metrics_listen is None
    assert (config.up.discover, config.up.demo) == (False, True)
    assert config.edge.session_headers == ("X-A", "X-B")
    assert config.agent.priority == -2


# ---------------------------------------------------------------- secrets


def test_secret_files_from_every_source(tmp_path: Path) -> None:
    """*_file keys read secrets from files, from YAML, environment and flags alike."""
    agent = write(tmp_path / "agent", "agent-t\n")
    admin = write(tmp_path / "admin", "  admin-t  \n")
    edge = write(tmp_path / "edge", "edge-t")
    config_file = write(tmp_path / "c.yaml", f"controlplane:\n  agent_token_file: {agent}\n")
    args = build_parser().parse_args(
        ["controlplane", "--config", config_file, "--edge-token-file", edge]
    )
    config = config_from_args(args, {"CORRAL_CONTROLPLANE_ADMIN_TOKEN_FILE": admin})
    cp = config.controlplane
    assert cp.agent_token is not None and cp.agent_token.reveal() == "agent-t"
    assert cp.admin_token is not None and cp.admin_token.reveal() == "admin-t"
    assert cp.edge_token is not None and cp.edge_token.reveal() == "edge-t"
    for text in (repr(config), str(cp.agent_token)):
        assert "agent-t" not in text and "admin-t" not in text and "edge-t" not in text


def test_api_keys_file_holds_one_key_a_line(tmp_path: Path) -> None:
    """The edge's API key file: one key a line, blank lines and # comments skipped."""
    keys = write(tmp_path / "keys", "# team a\nsk-one\n\n  sk-two  \n# retired: sk-old\n")
    args = build_parser().parse_args(["edge", "--api-key-file", keys])
    config = config_from_args(args, {})
    assert [k.reveal() for k in config.edge.api_keys] == ["sk-one", "sk-two"]


def test_inline_secret_is_wrapped() -> None:
    """A secret given inline (YAML or environment) is still a Secret, never a bare str."""
    config = load(config_file=None, environ={"CORRAL_AGENT_BACKEND_API_KEY": "bk"})
    assert config.agent.backend_api_key == Secret("bk")
    assert repr(config.agent.backend_api_key) == "Secret('***')"


@pytest.mark.parametrize(
    ("content", "expect"),
    [(None, "cannot read"), ("", "is empty"), ("\n  \n", "is empty")],
)
def test_unusable_secret_file_names_the_key(
    tmp_path: Path, content: str | None, expect: str
) -> None:
    """A missing or empty secret file is a ConfigError naming the key and the path."""
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load(config_file=None, environ={"CORRAL_EDGE_CONTROLPLANE_TOKEN_FILE": str(path)})
    assert expect in str(info.value)
    assert str(path) in str(info.value)
    assert "CORRAL_EDGE_CONTROLPLANE_TOKEN_FILE" in str(info.value)


def test_empty_api_keys_file_is_refused(tmp_path: Path) -> None:
    """An API key file with only comments would silently disable auth: refused."""
    keys = write(tmp_path / "keys", "# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        load(config_file=None, environ={}, flags={"edge": {"api_keys_file": keys}})


# ---------------------------------------------------------------- labels and aliases


def test_labels_from_yaml_environment_and_flags(tmp_path: Path) -> None:
    """Labels: a mapping in YAML, k=v,k=v in the environment, repeated --label flags."""
    config_file = write(tmp_path / "c.yaml", "agent:\n  labels:\n    zone: a\n    gpu: a100\n")
    assert load(config_file=config_file, environ={}).agent.labels == (
        ("zone", "a"),
        ("gpu", "a100"),
    )
    from_env = load(config_file=config_file, environ={"CORRAL_AGENT_LABELS": "zone=b, rack = 7"})
    assert from_env.agent.labels == (("zone", "b"), ("rack", "7"))
    args = build_parser().parse_args(["agent", "--label", "zone=c", "--label", "note=a=b"])
    assert config_from_args(args, {}).agent.labels == (("zone", "c"), ("note", "a=b"))


@pytest.mark.parametrize("bad", ["zone", "=a", "zone=a,oops"])
def test_bad_label_names_the_value(bad: str) -> None:
    """A label that is not key=value is refused, naming the offending entry."""
    with pytest.raises(ConfigError) as info:
        load(config_file=None, environ={"CORRAL_AGENT_LABELS": bad})
    message = str(info.value)
    assert "agent.labels" in message
    assert "expected key=value" in message


def test_aliases_from_yaml(tmp_path: Path) -> None:
    """controlplane.aliases: a list of {name, targets} mappings."""
    config_file = write(
        tmp_path / "c.yaml",
        "controlplane:\n  aliases:\n    - name: fast\n      targets: [a, b]\n"
        "    - name: one\n      targets: [c]\n",
    )
    assert load(config_file=config_file, environ={}).controlplane.aliases == (
        ModelAliasConfig(name="fast", targets=("a", "b")),
        ModelAliasConfig(name="one", targets=("c",)),
    )


@pytest.mark.parametrize(
    ("aliases", "expect"),
    [
        ("[{name: fast}]", "missing key 'targets'"),
        ("[{name: fast, targets: [a], weight: 2}]", "unknown key 'weight'"),
        ("[fast]", "expected a mapping, got 'fast'"),
        ("{fast: [a]}", "expected a list"),
    ],
)
def test_bad_aliases_are_named(tmp_path: Path, aliases: str, expect: str) -> None:
    """Malformed aliases give a ConfigError that says what is wrong with which key."""
    config_file = write(tmp_path / "c.yaml", f"controlplane:\n  aliases: {aliases}\n")
    with pytest.raises(ConfigError) as info:
        load(config_file=config_file, environ={})
    assert expect in str(info.value)
    assert "aliases" in str(info.value)


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
        ("edge: [listen]\n", "section 'edge' must be a mapping"),
        ("- edge\n", "the top level must be a mapping"),
        ("edge:\n  listen: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_file_values_name_key_and_value(tmp_path: Path, text: str, expect: str) -> None:
    """Every bad key or value in the file is a ConfigError naming it."""
    config_file = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load(config_file=config_file, environ={})
    assert expect in str(info.value)


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


# ---------------------------------------------------------------- flags cannot rot


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


# ---------------------------------------------------------------- the CLI's error path


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


# ---------------------------------------------------------------- the documented example


def test_example_config_loads_cleanly() -> None:
    """deploy/corral.example.yaml loads as it is, with its documented values."""
    config = load(config_file=str(EXAMPLE), environ={})
    assert config.controlplane.aliases[0].name == "llama-8b"
    assert config.agent.labels == (("zone", "lab"),)


def _sections_with_keys(text: str) -> dict[str, dict[str, bool]]:
    """section -> key -> whether it is set (True) or shown commented out (False)."""
    found: dict[str, dict[str, bool]] = {}
    section: str | None = None
    for line in text.splitlines():
        top = re.match(r"^([a-z_]+):\s*$", line)
        if top:
            section = top.group(1)
            found[section] = {}
            continue
        key = re.match(r"^  (# )?([a-z_]+):", line)
        if key and section is not None:
            found[section].setdefault(key.group(2), key.group(1) is None)
    return found


def test_example_config_documents_every_key() -> None:
    """Every key of every section appears in the example (set or commented out), with a comment."""
    text = EXAMPLE.read_text()
    documented = _sections_with_keys(text)
    assert set(documented) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        secrets = secret_fields(cls)
        for f in dataclasses.fields(cls):
            names = {f.name, f"{f.name}_file"} if f.name in secrets else {f.name}
            assert names & set(documented[section]), f"{section}.{f.name} is not documented"
        for key in documented[section]:
            base = key.removesuffix("_file") if key.endswith("_file") else key
            assert key in {f.name for f in dataclasses.fields(cls)} or base in secrets, (
                f"{section}.{key} in the example is not a real key"
            )
    # Each key line is preceded by a comment line (or continues a commented group).
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^  [a-z_]+:", line):
            previous = lines[i - 1].strip()
            assert (
                previous.startswith("#")
                or re.match(r"^[a-z_]+:", lines[i - 1])
                or (re.match(r"^  [a-z_]+:", lines[i - 1]))
            ), f"no comment before {line.strip()!r}"


def test_example_config_with_everything_uncommented_loads(tmp_path: Path) -> None:
    """Uncommenting every optional key still gives a valid config (secret files faked)."""
    uncommented = re.sub(r"(?m)^  # ([a-z_]+:)", r"  \1", EXAMPLE.read_text())
    data = yaml.safe_load(uncommented)
    token = write(tmp_path / "secret", "s3cret\n")
    for section, cls in SECTIONS.items():
        secrets = secret_fields(cls)
        for key in list(data[section]):
            if key.endswith("_file") and key.removesuffix("_file") in secrets:
                data[section][key] = token
    path = write(tmp_path / "all.yaml", yaml.safe_dump(data))
    config = load(config_file=path, environ={})
    assert config.controlplane.agent_token == Secret("s3cret")
    assert config.edge.api_keys == (Secret("s3cret"),)
    assert config.agent.backend_api_key == Secret("s3cret")
    assert config.edge.state_dir == "/var/lib/corral/edge"
    assert config.controlplane.tls_client_ca_file is not None
