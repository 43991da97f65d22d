"""edge/native.py: the request path runs compiled when built for these sources, else as Python."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from edge import native

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def test_the_request_path_is_compiled_here() -> None:
    """Every module of MODULES loads from the build (./dev test builds it before the suite)."""
    assert native.STATE.active, (
        f"native modules {native.STATE.reason}: run python -m edge.native_build (./dev test does)"
    )
    for name in native.MODULES:
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(SUFFIX), name
        assert native.STATE.build is not None
        assert Path(module.__file__).is_relative_to(native.STATE.build)


def test_libraries_export_only_their_init_and_pack_relocations() -> None:
    """Each compiled library exports only its PyInit_ and packs relative relocations (DT_RELR)."""
    assert native.STATE.build is not None, native.STATE.reason
    libraries = sorted(native.STATE.build.rglob(f"*{SUFFIX}"))
    assert len(libraries) == len(native.MODULES) + 1  # one shared C library
    for library in libraries:
        exported = subprocess.run(
            ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
        ).stdout.split()[2::3]
        assert exported and all(name.startswith("PyInit_") for name in exported), library
        dynamic = subprocess.run(
            ["readelf", "-d", str(library)], capture_output=True, text=True, check=True
        ).stdout
        assert "(RELR)" in dynamic, library


def test_a_build_belongs_to_one_version_of_the_sources(tmp_path: Path) -> None:
    """The same sources name the same build; one edited byte, in edge/ or corral/, another."""
    for package in ("edge", "corral"):
        shutil.copytree(native.ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    assert native.source_digest(tmp_path) == native.source_digest()
    for edited in ("edge/exchange.py", "corral/config.py"):
        path = tmp_path / edited
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert native.source_digest(tmp_path) != native.source_digest()
        path.write_bytes(original)


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=native.ROOT,
    )
    return done.stdout.strip()


def test_off_when_asked_or_when_the_sources_changed(tmp_path: Path) -> None:
    """CORRAL_NATIVE=0 runs the Python modules; so does a cache without this version."""
    code = "import edge.proxy, edge.native as n; print(edge.proxy.__file__, n.STATE.reason)"
    off = _python(code, CORRAL_NATIVE="0")
    assert off.split()[0].endswith("edge/proxy.py") and "off (CORRAL_NATIVE)" in off
    elsewhere = _python(code, CORRAL_NATIVE_CACHE=str(tmp_path))
    assert elsewhere.split()[0].endswith("edge/proxy.py") and "no build" in elsewhere


def test_the_python_edge_passes_the_lane_pool_and_bad_input_tests() -> None:
    """The request path as plain Python (no compiler where it runs) behaves the same."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "tests/edge/lane", "tests/edge/test_h1pool.py", "tests/edge/test_bad_input.py",
         "tests/edge/test_passthrough.py"],
        env={**os.environ, "CORRAL_NATIVE": "0"},
        capture_output=True,
        text=True,
        cwd=native.ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_old_builds_are_pruned(tmp_path: Path) -> None:
    """A new build keeps itself and the newest others, KEPT in all."""
    from edge.native_build import KEPT, _prune

    builds = []
    for i in range(KEPT + 2):
        build = tmp_path / f"build-{i}"
        build.mkdir()
        (build / native.MANIFEST).write_text("{}")
        os.utime(build, (1_000_000 + i, 1_000_000 + i))
        builds.append(build)
    (tmp_path / "staging.tmp").mkdir()  # not a build: left alone
    _prune(builds[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [b.name for b in builds[-KEPT:]] + ["staging.tmp"]
    )
