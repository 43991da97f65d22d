"""Resident memory each module's own import adds, in a fresh interpreter.

``python -m bench.import_costs MODULE[:FUNCTION] ...`` imports the modules in turn (calling
FUNCTION of one when named) and prints one JSON
object: the interpreter's RSS before and after (MiB), and each module imported on the way
with the RSS its own execution added (MiB: the growth while its body ran, minus the growth
while the modules it imported ran). Page-granular and allocator-dependent, so single small
figures are noisy; sums over a package are what to read.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024
_STATM = Path("/proc/self/statm")


def rss() -> float:
    """This process's resident set, MiB."""
    return int(_STATM.read_text().split()[1]) * _PAGE / _MIB


class _Timed(importlib.abc.Loader):
    """Wraps a loader: charges the RSS its module's body adds, less its nested imports'."""

    def __init__(self, inner: importlib.abc.Loader, finder: _Finder):
        self.inner, self.costs, self.stack = inner, finder.costs, finder.stack

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.stack.append(0.0)
        before = rss()
        try:
            self.inner.exec_module(module)
        finally:
            grown = rss() - before
            self.costs[module.__name__] = grown - self.stack.pop()
            if self.stack:
                self.stack[-1] += grown


class _Finder(importlib.abc.MetaPathFinder):
    """Asks the other finders, and wraps the loader of whatever they find."""

    def __init__(self) -> None:
        self.costs: dict[str, float] = {}
        self.stack: list[float] = []

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Timed(spec.loader, self)
            return spec
        return None


def measure(modules: Sequence[str]) -> dict[str, object]:
    """Import `modules` with every module's own cost recorded."""
    finder = _Finder()
    sys.meta_path.insert(0, finder)
    before = rss()
    try:
        for name in modules:
            module, _, call = name.partition(":")
            imported = importlib.import_module(module)
            if call:
                getattr(imported, call)()
    finally:
        sys.meta_path.remove(finder)
    return {"before": before, "after": rss(), "modules": finder.costs}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1:])))
