"""Build llama.cpp's `llama-server` from source once per machine, and the tiny test model.

    python -m tests.support.llamacpp_build      # what `./dev test` runs before pytest

The source is the llama.cpp that the `llama-cpp-python` sdist on PyPI vendors (pinned version
and sha256 below), built CPU only, Release, statically linked. Everything lives outside the
checkout, in ${CORRAL_LLAMA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/corral/llama-server-VERSION}:

    bin/llama-server     the binary (the build tree is removed once it is copied out)
    models/tiny.gguf     the deterministic random-weight model (tests/support/tiny_gguf.py)
    build.log            the last build's output, for a failure message

A build holds an exclusive lock, so concurrent runs (two worktrees, CI) build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# llama-cpp-python 0.3.36 vendors ggml-org/llama.cpp at 0c1e57098 (its CHANGELOG).
LLAMA_CPP_PY_VERSION = "0.3.36"
LLAMA_CPP_PY_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098"
JOBS = os.environ.get("CORRAL_LLAMA_JOBS", str(os.cpu_count() or 2))

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    # A portable x86-64 build (no -march=native), so a cache copied between machines runs.
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT}",
]


def cache_dir() -> Path:
    """Where the binary and model live, outside any checkout."""
    explicit = os.environ.get("CORRAL_LLAMA_CACHE")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "corral" / f"llama-server-{LLAMA_CPP_PY_VERSION}"


def server_binary() -> Path:
    return cache_dir() / "bin" / "llama-server"


def model_path() -> Path:
    return cache_dir() / "models" / "tiny.gguf"


def _log(message: str) -> None:
    print(f"llamacpp_build: {message}", file=sys.stderr, flush=True)


def _sdist(root: Path) -> Path:
    """The pinned llama-cpp-python sdist, downloaded with pip and checked against its sha256."""
    dl = root / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    path = dl / f"llama_cpp_python-{LLAMA_CPP_PY_VERSION}.tar.gz"
    if not path.exists():
        _log(f"downloading llama-cpp-python=={LLAMA_CPP_PY_VERSION} (sdist) with pip")
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                "--no-deps", "--no-binary", ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PY_VERSION}", "-d", str(dl),
            ],
            check=False,
        )  # fmt: skip
        if not path.exists():
            raise RuntimeError(f"pip did not leave {path.name} in {dl}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != LLAMA_CPP_PY_SHA256:
        path.unlink()
        raise RuntimeError(f"sha256 of {path.name} is {digest}, want {LLAMA_CPP_PY_SHA256}")
    return path


def _extract(sdist: Path, dest: Path) -> None:
    """Unpack only vendor/llama.cpp from the sdist into dest."""
    prefix = f"llama_cpp_python-{LLAMA_CPP_PY_VERSION}/vendor/llama.cpp/"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            if member.name.startswith(prefix) and member.name != prefix.rstrip("/") + "/.git":
                member.name = member.name[len(prefix) :]
                members.append(member)
        tar.extractall(dest, members=members, filter="data")


def build() -> Path:
    """Build llama-server if the cache lacks it; return its path."""
    binary = server_binary()
    if binary.exists():
        return binary
    for tool in ("cmake", "g++", "make"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"building llama-server needs {tool} (Debian: cmake g++ make)")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        src = root / "src"
        _extract(_sdist(root), src)
        started = time.monotonic()
        _log(f"building llama-server {LLAMA_CPP_COMMIT} (CPU, -j{JOBS}); a few minutes, once")
        # Keep cmake's git probes from finding an enclosing repository.
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(root)}
        log_path = root / "build.log"
        with log_path.open("wb") as log:
            steps = [
                ["cmake", "-S", str(src), "-B", str(src / "build"), *CMAKE_FLAGS],
                ["cmake", "--build", str(src / "build"), "--target", "llama-server", "-j", JOBS],
            ]
            for step in steps:
                done = subprocess.run(
                    ["nice", "-n", "10", *step], stdout=log, stderr=subprocess.STDOUT, env=env
                )
                if done.returncode != 0:
                    tail = log_path.read_text(errors="replace").splitlines()[-30:]
                    raise RuntimeError("llama-server build failed:\n" + "\n".join(tail))
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "build" / "bin" / "llama-server", binary.with_suffix(".tmp"))
        binary.with_suffix(".tmp").rename(binary)
        shutil.rmtree(src, ignore_errors=True)
        _log(f"built {binary} in {time.monotonic() - started:.0f} s")
    return binary


def model() -> Path:
    """Write the tiny model if the cache lacks it; return its path."""
    from tests.support.tiny_gguf import write_tiny_gguf

    path = model_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_tiny_gguf(tmp)
        tmp.rename(path)
    return path


def main() -> int:
    try:
        binary = build()
        gguf = model()
    except RuntimeError as exc:
        _log(str(exc))
        return 1
    _log(f"ready: {binary} and {gguf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
