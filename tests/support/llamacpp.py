"""Real llama.cpp `llama-server` processes on free loopback ports, serving the tiny model.

    with llama_servers(3, tmp_path) as servers:
        servers[0].url   # http://127.0.0.1:PORT, /health already "ok"

The binary and model come from tests/support/llamacpp_build.py's cache (`./dev test` builds
them first); a missing binary is a failure that says how to build it, never a skip. Each
server runs with `--parallel 2 --metrics --slots`, one thread (the machines have two cores
shared by everything), and llama.cpp's defaults otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.llamacpp_build import model_path, server_binary
from tests.support.net import free_port
from tests.support.procs import log_tail

ALIAS = "tiny-llama"
PARALLEL = 2
READY_TIMEOUT = 60.0


class LlamaServerError(RuntimeError):
    """A llama-server that is missing, exited, or never became ready."""


@dataclass
class LlamaServer:
    """One llama-server in its own process group."""

    port: int
    log_path: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    alias: str = ALIAS
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> LlamaServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def ready(self) -> bool:
        """True once GET /health answers {"status": "ok"} (503 while the model loads)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, within: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def require_built() -> tuple[Path, Path]:
    """The binary and model paths; fail (not skip) with the build command when missing."""
    binary, model = server_binary(), model_path()
    if not binary.exists() or not model.exists():
        raise LlamaServerError(
            f"llama-server or its model is missing ({binary}, {model}); `./dev test` builds "
            "them, or run: .venv/bin/python -m tests.support.llamacpp_build"
        )
    return binary, model


def server_args(binary: Path, model: Path, port: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        str(binary),
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--parallel", str(PARALLEL),
        "--metrics",
        "--slots",
        "--threads", "1",
        "--alias", ALIAS,
        *extra,
    ]  # fmt: skip


def wait_ready(servers: Sequence[LlamaServer], timeout: float = READY_TIMEOUT) -> None:
    """Block until every server is ready; fail at once when one exits."""
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for server in list(pending):
            if not server.alive:
                raise LlamaServerError(
                    f"llama-server on port {server.port} exited:\n{server.log_tail()}"
                )
            if server.ready():
                pending.remove(server)
        if pending:
            if time.monotonic() > deadline:
                raise LlamaServerError(
                    f"llama-server on port {pending[0].port} not ready after {timeout:.0f}s:\n"
                    + pending[0].log_tail()
                )
            time.sleep(0.05)


def start_llama_servers(count: int, log_dir: Path, extra: Sequence[str] = ()) -> list[LlamaServer]:
    """Start count servers on free ports and wait until all are ready (stopped on failure)."""
    binary, model = require_built()
    log_dir.mkdir(parents=True, exist_ok=True)
    servers: list[LlamaServer] = []
    try:
        for _ in range(count):
            port = free_port()
            server = LlamaServer(
                port, log_dir / f"llama-server-{port}.log", server_args(binary, model, port, extra)
            )
            servers.append(server.start())
        wait_ready(servers)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@contextlib.contextmanager
def llama_servers(
    count: int, log_dir: Path, extra: Sequence[str] = ()
) -> Iterator[list[LlamaServer]]:
    """Real llama-servers for the duration of a with block."""
    servers = start_llama_servers(count, log_dir, extra)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
