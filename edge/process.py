"""`corral edge` as a process: one event loop, or several worker processes on one port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from corral.config import EdgeConfig
from corral.runtime import configure_logging, run_until_signal
from edge.cores import usable_cores

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Event as EventType

log = logging.getLogger(__name__)

# A worker that dies is restarted, but not faster than this.
_RESTART_BACKOFF_SECONDS = 1.0
# A worker dying before it ever served, this many times in a row, stops the edge. Readiness,
# not time: on a loaded machine a fresh interpreter can take seconds just to import.
_MAX_STARTUP_DEATHS = 3


def main(config: EdgeConfig) -> int:
    """Run the edge until SIGINT/SIGTERM; exit code for the process. `workers` left at 0
    (not set anywhere) means one worker process per core this process may run on
    (edge/cores.py)."""
    if config.workers <= 0:
        config = dataclasses.replace(config, workers=usable_cores())
    if config.workers <= 1:
        return _serve_here(config)
    return _supervise(config)


def _serve_here(config: EdgeConfig, served: Callable[[], None] | None = None) -> int:
    """Serve in this process; `served` is called once the port is open."""
    from edge import lean_hpack
    from edge.lean_tls import import_aiohttp

    import_aiohttp()  # before anything imports aiohttp: one copy of the CA roots, not two
    lean_hpack.install()  # before grpclib imports hpack: no 4,096-tuple Huffman table
    from edge import collector
    from edge.errors import EdgeError
    from edge.startup import serve
    from edge.tasks import owned

    async def serving() -> None:
        ready = asyncio.Event()

        async def tell() -> None:
            await ready.wait()
            collector.settle()  # start-up's objects out of the collector's walks
            if served is not None:
                served()

        async with owned(tell(), "edge-ready-signal"):
            await serve(config, ready=ready)

    try:
        return run_until_signal(serving)
    except (OSError, EdgeError) as exc:
        log.error("edge cannot serve on %s: %s", config.listen, exc)
        return 1


def _worker(config: EdgeConfig, index: int, log_level: int, served: EventType) -> None:
    """Entry point of one worker process (spawned: a fresh interpreter)."""
    configure_logging(logging.getLevelName(log_level))
    base = config.edge_id or None
    worker_config = (
        config if base is None else dataclasses.replace(config, edge_id=f"{base}/{index}")
    )
    raise SystemExit(_serve_here(worker_config, served.set))


def _supervise(config: EdgeConfig) -> int:
    """Start `workers` processes sharing the port (SO_REUSEPORT); restart any that dies;
    forward SIGTERM and wait for them within the grace period."""
    import multiprocessing  # only a supervisor needs it

    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    level = logging.getLogger().getEffectiveLevel()

    served: dict[int, EventType] = {}

    def start(index: int) -> BaseProcess:
        served[index] = ctx.Event()
        proc = ctx.Process(
            target=_worker,
            args=(config, index, level, served[index]),
            name=f"corral-edge-{index}",
            daemon=False,
        )
        proc.start()
        return proc

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers = {i: start(i) for i in range(config.workers)}
    startup_deaths = dict.fromkeys(workers, 0)
    exit_code = 0
    log.info("edge supervising %d workers on %s", config.workers, config.listen)
    try:
        while exit_code == 0 and not stopping.wait(0.2):
            for index, proc in list(workers.items()):
                if proc.is_alive():
                    continue
                ever_served = served[index].is_set()
                startup_deaths[index] = 0 if ever_served else startup_deaths[index] + 1
                if startup_deaths[index] >= _MAX_STARTUP_DEATHS:
                    # A crash loop (port taken, bad config): restarting will not help.
                    log.error(
                        "edge worker %d keeps exiting (code %s); stopping", index, proc.exitcode
                    )
                    exit_code = 1
                    break
                log.warning("edge worker %d exited with %s; restarting", index, proc.exitcode)
                if stopping.wait(_RESTART_BACKOFF_SECONDS):
                    break
                workers[index] = start(index)
    finally:
        for proc in workers.values():
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + config.shutdown_grace_seconds + 2
        for proc in workers.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in workers.values():
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code
