"""corral/lean_env.py: `corral edge` restarts itself once under the lean settings."""

from __future__ import annotations

import os
import subprocess
import sys

from corral.lean_env import LEAN

# Says its process id on stderr, restarts, then reports what the restarted process has.
PROBE = """
import os, sys
print(os.getpid(), file=sys.stderr, flush=True)
from corral.lean_env import restart_lean
restart_lean()
def f():
    return 1
columns = list(f.__code__.co_positions())[-1][2]
print(os.environ.get("MALLOC_ARENA_MAX"), os.environ.get("PYTHONNODEBUGRANGES"), columns,
      sys.flags.utf8_mode)
"""


def probe(**set_before: str) -> tuple[list[str], str]:
    environ = {k: v for k, v in os.environ.items() if k not in LEAN} | set_before
    done = subprocess.run(
        [sys.executable, "-X", "utf8", "-c", PROBE], env=environ, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.split(), done.stdout.strip()


def test_restarts_once_in_the_same_process_with_both_settings() -> None:
    """Unset: one restart (same pid, interpreter options kept), then both settings hold."""
    pids, out = probe()
    assert len(pids) == 2 and pids[0] == pids[1]
    assert out == "1 1 None 1"  # one arena; no column positions; -X utf8 kept


def test_settings_already_made_are_kept_and_need_no_restart() -> None:
    """Both set (empty is set): no restart, nothing changed; one set: only the other added."""
    pids, out = probe(MALLOC_ARENA_MAX="4", PYTHONNODEBUGRANGES="")
    assert len(pids) == 1
    assert out.split()[0] == "4" and out.split()[-2] != "None"  # columns kept
    pids, out = probe(MALLOC_ARENA_MAX="4")
    assert len(pids) == 2
    assert out == "4 1 None 1"
