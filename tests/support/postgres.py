"""Throwaway PostgreSQL servers on free loopback ports, for tests.

`initdb` and `postgres` from /usr/lib/postgresql/<version>/bin (./dev installs Debian's
package). A missing server is a test failure, never a skip. PostgreSQL refuses to run as
root, so as root the cluster belongs to `nobody` (its data and socket directories are made
for it). Trust authentication on 127.0.0.1 only; fsync off: a test database, not a durable one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.procs import log_tail

USER = "corral"


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory; a RuntimeError when none is."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name.split(".")[0]),
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run ./dev test to install it")
    return found[-1].parent


def _owner() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root (it refuses root), else None."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


@dataclass
class PostgresServer:
    """One cluster (initdb once), started and stopped or killed at will."""

    port: int = field(default_factory=free_port)
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="corral-pg-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _run_as(self) -> dict[str, Any]:
        owner = _owner()
        return {} if owner is None else {"user": owner[0], "group": owner[1]}

    def init(self) -> None:
        owner = _owner()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "sock").mkdir(exist_ok=True)
        if owner is not None:
            for path in (self.base_dir, self.base_dir / "sock"):
                os.chown(path, *owner)
        args = [
            str(postgres_bin() / "initdb"),
            "-D", str(self.data_dir),
            "-U", USER,
            "--auth=trust",
            "-E", "UTF8",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        done = subprocess.run(
            args, capture_output=True, cwd=self.base_dir, check=False, **self._run_as()
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def start(self, timeout: float = 30.0) -> PostgresServer:
        """Start (initdb first if needed) and wait until it takes connections."""
        assert not self.alive, "already running"
        if not self.data_dir.exists():
            self.init()
        args = [
            str(postgres_bin() / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-h", "127.0.0.1",
            "-k", str(self.base_dir / "sock"),
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "shared_buffers=32MB",
            "-c", "max_connections=60",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        if _owner() is not None:
            os.chown(self.log_path, *_owner())  # type: ignore[misc]
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base_dir,
            **self._run_as(),
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        isready = str(postgres_bin() / "pg_isready")
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{log_tail(self.log_path, 20)}")
            done = subprocess.run(
                [isready, "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-q"],
                check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready:\n{log_tail(self.log_path, 20)}")
            time.sleep(0.05)  # a process start has no event to wait on

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions ended, data kept."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def _processes(self) -> list[int]:
        """The postmaster and its children (each backend is a session of its own, so no
        process group holds them all)."""
        assert self.process is not None
        found = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def pause(self) -> None:
        """SIGSTOP the whole server: connections stay open, nothing answers (a hung database)."""
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.remove()
