"""The fault suite's processes and how the test process reaches them: a Service is one
process on a namespace host that a scenario may kill and start again; a backend host runs a
fake and its agent; an etcd host one member. Fakes and the observer answer on Unix sockets.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.netns import Host, Process

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MODEL = "fault-model"
CP_PORT = 7701
EDGE_PORT = 7700
FAKE_PORT = 8000
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380

T = TypeVar("T")


class FaultSuiteError(Exception):
    """The topology could not be built or observed."""


def until(check: Callable[[], T], within: float, what: str, interval: float = 0.05) -> T:
    """Poll check until it returns something truthy (returned); fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            result = check()
        except (AssertionError, FaultSuiteError, OSError) as exc:
            result, last = None, exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within}s: {what} (last: {last!r})")
        time.sleep(interval)


class UnixHTTP:
    """Tiny JSON-over-HTTP client for a Unix socket (a fake's or the observer's)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        conn.sock = sock
        try:
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status != 200:
                raise FaultSuiteError(f"{method} {url} via {self.path}: {resp.status} {payload!r}")
            return json.loads(payload)
        finally:
            conn.close()


@dataclass
class Service:
    """A long-running process on a host that a test may kill and start again."""

    host: Host
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: Process | None = None

    def start(self) -> Service:
        if self.proc is not None and self.proc.alive():
            raise FaultSuiteError(f"{self.name} is already running")
        self.proc = self.host.spawn(
            self.argv, self.log, env={"PYTHONPATH": str(REPO), **self.env}, cwd=REPO,
            name=self.name,
        )  # fmt: skip
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def log_tail(self, lines: int = 25) -> str:
        return self.proc.log_tail(lines) if self.proc is not None else "(never started)"


@dataclass
class Backend:
    name: str
    kind: str
    host: Host
    fake: Service
    agent: Service
    control: UnixHTTP

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{FAKE_PORT}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control.call("GET", "/stats")
        return result

    def set_mode(self, mode: str) -> None:
        self.control.call("POST", "/mode", {"mode": mode})

    def start_fake(self) -> None:
        self.fake.start()
        until(self.stats, 20, f"fake {self.name} answering on its control socket")


@dataclass
class EtcdNode:
    name: str
    host: Host
    service: Service

    @property
    def client_url(self) -> str:
        return f"http://{self.host.ip}:{ETCD_CLIENT_PORT}"
