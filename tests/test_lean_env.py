"""corral/lean_env.py: `corral edge` restarts itself once under the lean settings, with the
configuration it built handed over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from corral.lean_env import LEAN, missing

HEADER = "import time: self [us]"  # -X importtime's first line, once per interpreter


def edge_on_a_taken_port(**set_before: str) -> tuple[int, list[str]]:
    """`corral edge` told to listen where something already listens: its exit code and its
    stderr, one part per interpreter that ran."""
    environ = {k: v for k, v in os.environ.items() if k not in LEAN} | set_before
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "corral.cli", "edge", "--workers", "1",
             "--listen", f"127.0.0.1:{port}", "--controlplane", "127.0.0.1:1",
             "--log-level", "ERROR"],
            env=environ, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert f"edge cannot serve on 127.0.0.1:{port}" in done.stderr.split(HEADER)[-1]
    return done.returncode, done.stderr.split(HEADER)[1:]


def imports(part: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in part.splitlines() if "|" in line}


def test_missing_leaves_settings_already_made() -> None:
    """A variable set to anything, empty included, is not added again."""
    assert missing({}) == dict(LEAN)
    assert missing({"MALLOC_ARENA_MAX": "4", "PYTHONNODEBUGRANGES": ""}) == {}
    assert missing({"MALLOC_ARENA_MAX": "4"}) == {"PYTHONNODEBUGRANGES": "1"}


def test_edge_restarts_once_with_its_configuration_and_options() -> None:
    """Settings unset: a second interpreter serves the first's configuration, without YAML."""
    code, parts = edge_on_a_taken_port()
    assert code == 1 and len(parts) == 2
    served = imports(parts[1])
    assert "edge.app" in served
    assert not {m for m in served if m == "yaml" or m.startswith("yaml.")}


def test_edge_with_the_settings_made_is_not_restarted() -> None:
    """Both set: one interpreter builds the configuration and serves it."""
    code, parts = edge_on_a_taken_port(MALLOC_ARENA_MAX="4", PYTHONNODEBUGRANGES="")
    assert code == 1 and len(parts) == 1
    assert "edge.app" in imports(parts[0])
