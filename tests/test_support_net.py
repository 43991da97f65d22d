"""The tests' own loopback helpers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support import net


class _Probe:
    """A socket whose bound port comes from a script (as the kernel may pick them)."""

    ports: Iterator[int] = iter(())

    def __init__(self, *_: object) -> None:
        self.port = next(_Probe.ports)

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def bind(self, _address: object) -> None:
        return None

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_port_never_gives_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel handing out the same port twice in a row still yields two ports."""
    monkeypatch.setattr(net, "_given", set())
    monkeypatch.setattr(_Probe, "ports", iter([41000, 41000, 41001]))
    monkeypatch.setattr(socket, "socket", _Probe)
    assert (net.free_port(), net.free_port()) == (41000, 41001)
