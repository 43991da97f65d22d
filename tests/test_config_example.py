"""The documented example, deploy/corral.example.yaml: it loads as it is, documents every key,
and loads with everything uncommented.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from corral.config import SECTIONS, Secret, load
from tests.support.config import secret_fields, write

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "corral.example.yaml"


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
