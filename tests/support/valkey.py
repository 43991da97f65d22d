"""Throwaway Valkey (or Redis: one protocol) servers on free loopback ports, for tests.

`valkey-server` if it is installed, else `redis-server` (./dev installs one). A missing
binary is a test failure, never a skip. No persistence: a kill loses every key, as a crashed
cache node without a disk would; `restart()` comes back on the same port, so clients that
reconnect by themselves find it again.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import free_port
from tests.support.procs import log_tail


def valkey_binary() -> str:
    """Path of valkey-server, else redis-server; a RuntimeError when neither is installed."""
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    raise RuntimeError(
        "neither valkey-server nor redis-server is installed: run ./dev test to install it"
    )


@dataclass
class ValkeyServer:
    """One server process; start/stop/kill/pause/restart for fault tests."""

    port: int = field(default_factory=free_port)
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="corral-valkey-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "valkey.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> ValkeyServer:
        """Start and wait until it answers PING."""
        assert not self.alive, "already running"
        args = [
            valkey_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.base_dir),
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"valkey exited: {log_tail(self.log_path, 20)}")
            if self.ping():
                return
            if time.monotonic() > deadline:
                tail = log_tail(self.log_path, 20)
                raise TimeoutError(f"valkey not ready on {self.port}: {tail}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True when the server answers PING now (raw protocol: no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """Send one command in the raw protocol and return the raw reply (for inspection)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def kill(self) -> None:
        """SIGKILL, as a crash would (every key is lost: no persistence)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a frozen node)."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT), SIGKILL if it does not go within 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop and delete its directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextmanager
def running_valkey() -> Iterator[ValkeyServer]:
    """A started server, stopped and removed afterwards, pass or fail."""
    server = ValkeyServer()
    try:
        yield server.start()
    finally:
        server.remove()
