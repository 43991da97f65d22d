"""Loopback ports and readiness waits for tests."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

# Ports are handed out from below the kernel's ephemeral range, which no outgoing
# connection's source port ever comes from. A port the kernel picks (a bind to port 0) comes
# from that range, and between the probe and the test's own bind any connection of any
# process may take it as its source port (fresh-clone CI at 9893613: an edge fixture's
# port was in use when the edge bound it). Each pytest-xdist worker walks a slice of its
# own, so two workers never hand out the same port; each port is probed free before it is
# given; the walk wraps around, so a port comes again only after its whole slice (an etcd
# member's client and peer ports once came out the same when the kernel picked them).
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 30001  # above every inference server's usual port (corral/embedded.py USUAL_PORTS)
_ENOUGH = 1000  # ports a region needs to be walked; else the kernel picks
_walk: list[int] = []  # [next port, first of the slice, end of the slice], once known


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral ports, first and last (Linux's default when unreadable)."""
    try:
        first, last = (int(n) for n in _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return first, last


def port_slice(worker: str, workers: int, ephemeral: tuple[int, int]) -> range:
    """The ports one pytest-xdist worker (gw0, gw1, ...; "" outside xdist) hands out: its
    share of the room below the ephemeral range (above it when there is none below), or an
    empty range when neither has enough."""
    first, last = ephemeral
    if first - _LOWEST >= _ENOUGH:
        start, stop = _LOWEST, first
    elif 65536 - (last + 1) >= _ENOUGH:
        start, stop = last + 1, 65536
    else:
        return range(0)
    index = int(worker[2:]) if worker[:2] == "gw" and worker[2:].isdigit() else 0
    size = (stop - start) // max(1, workers)
    return range(start + index * size, start + (index + 1) * size)


def worker_slice() -> range:
    """This process's ports: its pytest-xdist worker's slice (the whole room outside xdist)."""
    return port_slice(
        os.environ.get("PYTEST_XDIST_WORKER", ""),
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1),
        ephemeral_range(),
    )


def _probe(host: str, port: int) -> int:
    """`port` if nothing holds it on host now, else 0 (port 0: the port the kernel picks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return 0
        return int(sock.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host now, from this process's slice below the ephemeral range."""
    if not _walk:
        ports = worker_slice()
        _walk[:] = [ports.start, ports.start, ports.stop]
    port, start, stop = _walk
    for _ in range(stop - start):
        if port >= stop:
            port = start
        found, port = _probe(host, port), port + 1
        if found:
            _walk[0] = port
            return found
    return _probe(host, 0)  # no slice, or every port of it in use: the kernel picks


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


async def eventually(check, within: float = 15.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll an (async or sync) check until it returns a truthy value; return that value.

    For conditions that have no event to wait on (state in another process). The interval is
    short and the timeout generous: the test waits on the condition, not on a guess.
    """
    deadline = asyncio.get_running_loop().time() + within
    last_exc: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except AssertionError as exc:
            last_exc = exc
        if asyncio.get_running_loop().time() > deadline:
            if last_exc is not None:
                raise last_exc
            raise TimeoutError(f"condition not met within {within}s: {check}")
        await asyncio.sleep(interval)
