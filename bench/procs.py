"""Benchmark processes: pinned child processes in their own groups, their /proc readings,
the workspace that owns them, ports and readiness."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.common import PROXY_CPU, PYTHON, REPO, BenchError
from tests.support.net import free_port as free_port  # one port never given twice

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes


def process_group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat (11 and 12 after the command name).
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


class Proc:
    """A child process in its own process group, pinned to CPUs, logged to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        full = ["taskset", "-c", cpus, *argv] if cpus is not None else list(argv)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                full,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=str(cwd or REPO),
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited ({self.popen.returncode}): {self.log_tail()}")

    def pids(self) -> list[int]:
        return process_group_pids(self.pid)

    def rss_mib(self) -> float:
        """Resident memory of the whole process group (master and workers), in MiB."""
        return sum(rss_kib(p) for p in self.pids()) / 1024

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after `grace` seconds."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


class Procs:
    """Owns every process a benchmark starts; stops them all, last started first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        proc = Proc(name, argv, cpus=cpus, log_dir=self.log_dir, env=env)
        self.items.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        while self.items:
            self.items.pop().stop()


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[tuple[Path, Procs]]:
    """A temp directory and a process owner; everything is removed/stopped on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix=f"corral-bench-{prefix}-"))
    procs = Procs(tmp)
    try:
        yield tmp, procs
    finally:
        procs.stop_all()
        if os.environ.get("CORRAL_BENCH_KEEP") is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"(kept {tmp})")


def pin_self(cpus: str) -> None:
    """Pin this (orchestrating, load-generating) process."""
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


# ---------------------------------------------------------------- network


def wait_http(
    url: str,
    proc: Proc | None = None,
    timeout: float = 30.0,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Until url answers 2xx: to a GET, or to a POST of `body` (with `headers`)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        try:
            request = urllib.request.Request(url, body, headers or {})
            with urllib.request.urlopen(request, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    tail = proc.log_tail() if proc is not None else ""
    raise BenchError(f"{url} not ready after {timeout}s ({last}) {tail}")


def wait_port(port: int, proc: Proc | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_edge(
    procs: Procs,
    name: str,
    cp_port: int,
    config: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """A `corral edge` on the proxy CPU, following the control plane (or bench snapshot
    server) at cp_port; its process and base URL once /readyz answers."""
    port = free_port()
    argv = [PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--controlplane", f"127.0.0.1:{cp_port}",
            "--workers", "1", *extra, "--log-level", "WARNING"]  # fmt: skip
    proc = procs.start(name, argv, cpus=PROXY_CPU, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, timeout=60)
    return proc, base
