"""The edge's request path compiled to C with mypyc, when a build for these sources exists.

edge/native_build.py compiles `MODULES` (the lane server, the upstream client, request
handling, routing, keys, metrics, the gateway's guard, cache, limits and usage records) once
per version of the sources into `~/.cache/corral/native/<digest>/` (`./dev up`, `./dev test`
and `./dev bench` run it, or `python -m edge.native_build`). `install()`, run when the
`edge` package is imported, puts a finder first on `sys.meta_path` that loads those modules
from the build whose digest matches the sources beside it, so the same Python code runs, as
C: a build never outlives an edit.
No build for the sources, `CORRAL_NATIVE=0`, or no C compiler: the edge is the pure-Python
one it always was, and says which it runs when it starts (edge/startup.py).

The digest covers every `.py` file of `edge/` and `corral/` (compiled code reads the types
of what it imports), the interpreter's ABI and the module list.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Final

# The modules a request runs through, compiled together (one C library: calls between them
# are C calls). mypyc compiles no async generators: those live elsewhere
# (edge/gateway/lifetimes.py).
MODULES: Final = (
    "edge.lane.protocol",
    "edge.lane.answer",
    "edge.lane.request",
    "edge.lane.stream",
    "edge.h1pool",
    "edge.h1answer",
    "edge.proxy",
    "edge.attempt",
    "edge.exchange",
    "edge.inbound",
    "edge.relay",
    "edge.forward",
    "edge.deadlines",
    "edge.accounting",
    "edge.balancer",
    "edge.metrics",
    "edge.traffic",
    "edge.table",
    "edge.routing",
    "edge.gateway.call",
    "edge.gateway.tokens",
    "edge.gateway.records",
    "edge.gateway.identity",
    "edge.gateway.usage",
    "edge.gateway.prices",
    "edge.gateway.pipeline",
    "edge.gateway.tap",
    "edge.gateway.content",
    "edge.gateway.scoped",
    "edge.gateway.cache.service",
    "edge.gateway.cache.store",
    "edge.gateway.cache.key",
    "edge.gateway.cache.assemble",
    "edge.gateway.cache.replay",
    "edge.gateway.guard.engine",
    "edge.gateway.guard.detectors",
    "edge.gateway.guard.prefilter",
    "edge.gateway.guard.sieve",
    "edge.gateway.guard.redact",
    "edge.gateway.guard.bodies",
    "edge.gateway.limits.gate",
    "edge.gateway.limits.limiter",
    "edge.gateway.limits.answers",
    "edge.gateway.limits.bucket",
    "edge.gateway.limits.ticket",
    "edge.gateway.limits.plan",
)
ROOT: Final = Path(__file__).resolve().parent.parent  # holds edge/ and corral/
MANIFEST: Final = "manifest.json"
OFF: Final = frozenset(("0", "off", "no", "false"))


@dataclass
class State:
    """What this process runs: compiled modules from `build`, when it is set."""

    reason: str = "not looked for"
    build: Path | None = None

    @property
    def active(self) -> bool:
        return self.build is not None


STATE: Final = State()


def cache_dir() -> Path:
    """Where builds live: $CORRAL_NATIVE_CACHE, else the user's cache (as llama-server's)."""
    if configured := os.environ.get("CORRAL_NATIVE_CACHE"):
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "corral" / "native"


def source_digest(root: Path = ROOT) -> str:
    """Names this version of the sources (and the interpreter it is compiled for)."""
    digest = hashlib.blake2b(digest_size=16)
    abi = f"{sys.implementation.cache_tag} {importlib.machinery.EXTENSION_SUFFIXES[0]}\n"
    digest.update(abi.encode())
    digest.update("\n".join(MODULES).encode())
    for package in ("edge", "corral"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


class _Finder:
    """Finds the built modules (and their shared C library) in one build directory (a
    meta path finder by its method: importlib.abc would load importlib.resources too)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def install(root: Path = ROOT) -> bool:
    """Load `MODULES` from the build for these sources from now on, if there is one."""
    if os.environ.get("CORRAL_NATIVE", "").lower() in OFF:
        STATE.reason = "off (CORRAL_NATIVE)"
        return False
    build = cache_dir() / source_digest(root)
    try:
        manifest = json.loads((build / MANIFEST).read_text())
    except (OSError, ValueError):
        STATE.reason = "no build for these sources (python -m edge.native_build; ./dev does)"
        return False
    files = {name: build / file for name, file in manifest["files"].items()}
    # First on the path: the `edge` package runs this before any module of MODULES loads.
    sys.meta_path.insert(0, _Finder(files))
    STATE.reason, STATE.build = f"on ({len(MODULES)} modules)", build
    return True
