"""Builds the edge's native modules (edge/native.py) with mypyc: `python -m edge.native_build
[--optional]`, which `./dev up`, `./dev test` and `./dev bench` run first.

The sources of `edge/` and `corral/` are copied to a scratch directory, where mypyc compiles
`MODULES` together (mypy reads what they import for the types) into one C library and a
small module each; those land in the cache under the sources' digest, renamed into place
whole, so an edge never sees half a build. A build found there is not made again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from edge.native import MANIFEST, MODULES, ROOT, cache_dir, source_digest

# The libraries export their module's init function only, and pack their relative
# relocations (DT_RELR, binutils 2.38 and glibc 2.36 on): ~3,500 exported symbols and ~12,000
# relocation entries would otherwise be read at load, and stay resident (~0.45 MiB) in every
# edge process. Calls between the library's functions become direct, not through the PLT.
_EXPORTS: Final = "exports.map"
_EXPORTED: Final = "{ global: PyInit_*; local: *; };\n"
_LINKING: Final = "-Wl,--version-script={exports} -Wl,-z,pack-relative-relocs"


class NativeError(Exception):
    """The native modules could not be built (no compiler, or mypyc refused the code)."""


def build(root: Path = ROOT, compiling: Callable[[], None] = lambda: None) -> Path:
    """The build for `root`'s sources: found in the cache, or compiled into it (~1 minute,
    `compiling` called first)."""
    target = cache_dir() / source_digest(root)
    if (target / MANIFEST).exists():
        return target
    compiling()
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise NativeError(f"no C compiler ({compiler}): install gcc (Debian: apt-get install gcc)")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        raise NativeError(f"no Python headers ({include}): install python3-dev")
    with tempfile.TemporaryDirectory(prefix="corral-native-") as tmp:
        work = Path(tmp)
        for package in ("edge", "corral"):
            shutil.copytree(root / package, work / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))  # fmt: skip
        paths = [name.replace(".", "/") + ".py" for name in MODULES]
        (work / _EXPORTS).write_text(_EXPORTED)
        flags = f"{os.environ.get('LDFLAGS', '')} {_LINKING.format(exports=work / _EXPORTS)}"
        # The copy is compiled as it lies in `work`: a PYTHONPATH (bench/compare.py runs a
        # tree of its own so) would put a second copy on mypy's path, which then analyses
        # what the copy imports as installed packages (asyncpg: "missing library stubs").
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *paths],
            cwd=work,
            capture_output=True,
            text=True,
            env={**env, "CORRAL_NATIVE": "0", "LDFLAGS": flags.strip()},
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).strip().splitlines()
            raise NativeError("mypyc failed:\n" + "\n".join(out[-20:]))
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        files = {name: name.replace(".", "/") + suffix for name in MODULES}
        files |= {lib.name.split(".")[0]: lib.name for lib in work.glob(f"*__mypyc{suffix}")}
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        for file in files.values():
            (staging / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / file, staging / file)
    (staging / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
    try:
        staging.rename(target)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    _prune(target)
    return target


KEPT: Final = 4  # builds kept: the newest, and three older versions of the sources


def _prune(newest: Path) -> None:
    """Every edit makes a build (~7 MB): all but the `KEPT` most recent are removed."""
    builds = sorted(
        (path for path in newest.parent.iterdir() if (path / MANIFEST).exists()),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for old in builds[KEPT:]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Build (or find) the native modules; `--optional`: a failure is reported and exits 0
    (the edge then runs as pure Python)."""
    if any(arg != "--optional" for arg in argv):
        sys.stderr.write("usage: python -m edge.native_build [--optional]\n")
        return 2
    try:
        build(compiling=_announce)
    except NativeError as exc:
        sys.stderr.write(f"edge: native modules not built: {exc}\n")
        return 0 if "--optional" in argv else 1
    return 0


def _announce() -> None:
    sys.stderr.write("edge: compiling the request path with mypyc (~1 min, once per version)\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
