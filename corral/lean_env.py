"""`corral edge` restarts itself once, before serving, with two settings only an
interpreter's environment can make (each is read when the process starts):

- MALLOC_ARENA_MAX=1: glibc gives every thread that allocates its own arena (the usage
  writer's SQLite thread grew one by ~1 MiB under load); one arena for all threads.
- PYTHONNODEBUGRANGES=1: code objects without column positions (tracebacks lose their
  ^^^ markers, nothing else changes); the edge holds ~400 modules' code.

Together 0.6 MiB less once ready and 0.75 MiB less after load (docs/BENCHMARKS.md, Edge
memory), CPU per request unchanged. `os.execv` keeps the process id, its open files and its
arguments (`sys.orig_argv`: interpreter options too); worker processes inherit the
environment. A variable already set (to anything, empty included) is left as it is, and
the process is not restarted for it: setting both is how to opt out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

LEAN: Mapping[str, str] = {"MALLOC_ARENA_MAX": "1", "PYTHONNODEBUGRANGES": "1"}


def missing(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings the environment does not make yet."""
    return {name: value for name, value in LEAN.items() if name not in environ}


def restart_lean() -> None:
    """Replace this process with itself under the lean settings, unless they are all set
    (then return at once). Call it before any thread starts or any output is written."""
    adding = missing(os.environ)
    if not adding or not sys.platform.startswith("linux"):
        return
    os.environ.update(adding)
    os.execv(sys.executable, sys.orig_argv)
