"""Configuration sources: defaults, YAML, CORRAL_* environment and flags and their precedence;
secrets from files, inline and key files; labels and model aliases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cli import build_parser, config_from_args
from corral.config import ConfigError, CorralConfig, ModelAliasConfig, Secret, load
from tests.support.config import write

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
