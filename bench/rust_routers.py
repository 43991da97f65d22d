"""The Rust routers issue 18 compares with, for bench/overhead.py: vllm-router and sglang-router.

Both ship as Python wheels around a Rust binary (PyPI: `vllm-router`, `sglang-router`). They
are installed once per machine into a venv of their own, outside the checkout, in
${XDG_CACHE_HOME:-~/.cache}/corral/bench-routers-VERSIONS (as the llama-server build is,
tests/support/llamacpp_build.py), never into the project's: their dependencies are theirs.
Each is started with one worker URL (the nginx backend) and the policy ANCHORS.md measured it
with (vllm-router round robin, sglang-router cache-aware), and is ready once it relays a chat
completion.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from bench.common import BenchError
from bench.procs import Proc, Procs, free_port, wait_http

VLLM: Final = "vllm-router==0.1.17"
SGLANG: Final = "sglang-router==0.3.2"


def venv() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = "bench-routers-" + "-".join(p.replace("==", "") for p in (VLLM, SGLANG))
    return base / "corral" / name


def ensure() -> Path:
    """The routers' venv, made and filled once (pip, from PyPI); its python."""
    root = venv()
    python = root / "bin" / "python"
    ready = root / ".installed"
    if ready.exists():
        return python
    print(f"  installing {VLLM} and {SGLANG} into {root} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", VLLM, SGLANG],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"cannot install {VLLM} and {SGLANG}: {exc.stderr or exc}") from exc
    ready.touch()
    return python


def start(procs: Procs, which: str, backend: str, cpus: str, probe: bytes) -> tuple[Proc, str]:
    """`which` ("vllm" or "sglang") relaying to `backend`, ready (it relayed the chat body
    `probe`): its process and base URL."""
    python = ensure()
    port = free_port()
    if which == "vllm":
        argv = [str(python.parent / "vllm-router"), "--policy", "round_robin",
                "--log-level", "warning"]  # fmt: skip
    else:
        argv = [str(python), "-m", "sglang_router.launch_router", "--policy", "cache_aware",
                "--log-level", "warn"]  # fmt: skip
    # Each its own metrics port: both default to 29000, and both are up at once.
    argv += ["--worker-urls", backend, "--host", "127.0.0.1", "--port", str(port),
             "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]  # fmt: skip
    proc = procs.start(f"{which}-router", argv, cpus=cpus)
    base = f"http://127.0.0.1:{port}"
    # Ready once its checks of the worker are done: a chat completion comes back.
    json = {"Content-Type": "application/json"}
    wait_http(base + "/v1/chat/completions", proc, 60, body=probe, headers=json)
    return proc, base
