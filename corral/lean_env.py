"""`corral edge` restarts itself once, before serving, with two settings only an
interpreter's environment can make (each is read when the process starts):

- MALLOC_ARENA_MAX=1: glibc gives every thread that allocates its own arena (the usage
  writer's SQLite thread grew one by ~1 MiB under load); one arena for all threads.
- PYTHONNODEBUGRANGES=1: code objects without column positions (tracebacks lose their
  ^^^ markers, nothing else changes); the edge holds ~500 modules' code.

The configuration built from the command line, file and environment is handed over
pickled in an anonymous file (memfd), as `--workers` hands it to its workers: the serving
process never loads the YAML parser. `os.execv` keeps the process id and its open files
(`ps` shows `python -m corral.lean_env FD edge ...`: the original arguments after the
descriptor); the interpreter's own options (-X ...) are passed on; worker processes
inherit the environment. A variable already set (to anything, empty included) is left as
it is, and the process is not restarted for it: setting both is how to opt out.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.config import CorralConfig

LEAN: Mapping[str, str] = {"MALLOC_ARENA_MAX": "1", "PYTHONNODEBUGRANGES": "1"}
# The interpreter's options (-X ..., -O, ...) as arguments: what multiprocessing passes on.
_OPTIONS = "_args_from_interpreter_flags"


def missing(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings the environment does not make yet."""
    return {name: value for name, value in LEAN.items() if name not in environ}


def restart_lean(command: str, config: CorralConfig, log_level: str) -> None:
    """Replace this process with one that runs `command` with `config` under the lean
    settings, unless they are all set already (then return at once). Call it before any
    thread starts."""
    adding = missing(os.environ)
    if not adding or not sys.platform.startswith("linux"):
        return
    import subprocess

    try:
        fd = os.memfd_create("corral-config", 0)  # inherited across exec
    except OSError:  # a sandbox that forbids it: serve here, without the settings
        return
    with open(fd, "wb", closefd=False) as handover:
        pickle.dump((command, config, log_level), handover)
    os.lseek(fd, 0, os.SEEK_SET)
    os.environ.update(adding)
    sys.stdout.flush()
    sys.stderr.flush()
    options: list[str] = getattr(subprocess, _OPTIONS)()
    # The command line after the descriptor only shows in `ps` what this process runs.
    shown = sys.argv[1:]
    os.execv(sys.executable, [sys.executable, *options, "-m", __name__, str(fd), *shown])


def main(fd: int) -> int:
    """The restarted process: read the configuration handed over and run the component."""
    with open(fd, "rb") as handover:
        command, config, log_level = pickle.load(handover)
    from corral.cli import run_component
    from corral.runtime import configure_logging

    configure_logging(log_level)
    return run_component(command, config)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
