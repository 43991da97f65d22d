"""The tests' own loopback helpers."""

from __future__ import annotations

import socket

import pytest

from tests.support import net

LINUX_DEFAULT = (32768, 60999)


def test_each_worker_has_ports_of_its_own_below_the_ephemeral_range() -> None:
    """Two workers' slices are disjoint, below the ephemeral ports and the usual ones."""
    first, second = (net.port_slice(w, 2, LINUX_DEFAULT) for w in ("gw0", "gw1"))
    assert first.start == 30001 and first.stop == second.start and second.stop <= 32768
    assert len(first) == len(second) >= 1000
    assert net.port_slice("", 1, LINUX_DEFAULT) == range(30001, 32768)
    # No room below (the kernel's range starts low): above it; no room at all: none.
    assert net.port_slice("gw0", 1, (1024, 60000)) == range(60001, 65536)
    assert net.port_slice("gw0", 1, (1024, 65000)) == range(0)


def test_free_port_passes_over_a_port_in_use_and_wraps_around(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A held port is passed over; after the slice's end the walk starts again."""
    mine = net.worker_slice()
    # Two free neighbours in this worker's own slice (nothing outside this test binds there).
    port = next(
        p for p in mine[:-1] if net._probe("127.0.0.1", p) and net._probe("127.0.0.1", p + 1)
    )
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        monkeypatch.setattr(net, "_walk", [port, port, port + 2])
        assert net.free_port() == port + 1
        assert net.free_port() == port + 1  # wrapped: the held one passed over again


def test_free_port_falls_back_to_the_kernel_without_a_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no room outside the ephemeral range, the kernel picks the port."""
    monkeypatch.setattr(net, "_walk", [0, 0, 0])
    first, last = net.ephemeral_range()
    assert first <= net.free_port() <= last
