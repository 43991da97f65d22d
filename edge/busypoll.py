"""Busy polling (`edge.busy_poll_us`): after each read, the worker's loop polls for the next
event for a short window instead of sleeping.

On a virtual machine whose idle CPUs halt at once (a guest kernel with
`haltpoll.guest_halt_poll_ns=0`, as on the machines docs/BENCHMARKS.md is measured on), and
on hosts with deep C-states, every wake-up of a sleeping worker by another CPU costs tens of
microseconds. A request at one connection wakes its worker twice: when it arrives and when
the backend answers. Polling for a window after each read catches the next one while the
CPU still runs. The guest kernel's haltpoll does the same for a whole machine, and HAProxy's
`busy-polling` does it for its process, always.

The cost is CPU: the worker's core stays busy for the window after every read, so a worker
with steady traffic at low concurrency shows a whole core busy, and an idle one none. Off
(0) by default. Reads on the lane's connections and the fast upstream client's are watched
(the hot path); aiohttp's own connections are not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

_monotonic: Final = time.monotonic


class BusyPoll:
    """Keeps its loop polling, without sleeping, until `window` seconds after the last touch."""

    __slots__ = ("_loop", "_spinning", "_until", "window")

    def __init__(self, window: float, loop: asyncio.AbstractEventLoop) -> None:
        self.window = window
        self._loop = loop
        self._until = 0.0
        self._spinning = False

    @property
    def spinning(self) -> bool:
        return self._spinning

    def touch(self) -> None:
        """A read happened: poll until `window` from now."""
        self._until = _monotonic() + self.window
        if not self._spinning:
            self._spinning = True
            self._loop.call_soon(self._spin)

    def _spin(self) -> None:
        # A ready callback makes the loop poll its sockets with a zero timeout: while this one
        # keeps coming back, the loop never blocks, and the CPU never halts.
        if _monotonic() < self._until:
            self._loop.call_soon(self._spin)
        else:
            self._spinning = False

    def stop(self) -> None:
        """No more polling (the edge is stopping): the next spin is the last."""
        self._until = 0.0


def busy_poll(window_us: int) -> BusyPoll | None:
    """The running loop's poller for a window of `window_us` microseconds (EdgeConfig bounds
    it); None when 0."""
    if window_us <= 0:
        return None
    return BusyPoll(window_us / 1e6, asyncio.get_running_loop())
