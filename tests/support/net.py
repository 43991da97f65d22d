"""Loopback ports and readiness waits for tests."""

from __future__ import annotations

import asyncio
import socket
import time

# Every port free_port gave this process: the kernel may give a port it just gave again
# once its probe socket is closed (an etcd member's client and peer ports once came out the
# same, and etcd could not bind the second), so none is given twice.
_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host now (the kernel picks it), never one this process
    was given before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port


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
