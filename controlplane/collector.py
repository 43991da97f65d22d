"""The control plane and Python's cyclic garbage collector: its pauses timed, and what
start-up built taken out of its reach.

A full collection walks every object the collector tracks, and the event loop stands still
meanwhile: a dashboard answer or a report caught behind one waits for all of it. Two
things keep those walks short: long-lived data held as containers of atomics the collector
stops tracking (controlplane/traffic/digest.py), and `settle()` once the replica serves,
which moves everything start-up built (modules, classes, protobuf descriptors, the first
listings) to the permanent generation that collections skip. Each pause is recorded in
corral_controlplane_gc_pause_seconds (bench/traffic.py reads it), and how late the loop
runs a timer (any long step, collections included) in corral_controlplane_loop_lag_seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Histogram


@contextlib.contextmanager
def timed(pauses: Histogram) -> Iterator[None]:
    """Observe every collection's pause, by generation, while the block runs."""
    started = 0.0

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            pauses.labels(str(info["generation"])).observe(time.perf_counter() - started)

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


def settle() -> None:
    """Once start-up is done: collect its garbage, then freeze what is left, so later
    collections never walk it again (it is still freed when nothing refers to it)."""
    gc.collect()
    gc.freeze()


LAG_TICK_SECONDS = 0.02


async def watch_loop(lags: Histogram, tick: float = LAG_TICK_SECONDS) -> None:
    """Observe how late each of a timer's ticks runs, until cancelled: a step that holds
    the loop shows as a tick that late (50 ticks a second cost well under 0.5 % of a core)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + tick
        await asyncio.sleep(tick)
        lags.observe(max(0.0, loop.time() - due))
