"""`corral edge` as a process: one event loop, or several worker processes on one port."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from corral.config import EdgeConfig
from corral.runtime import configure_logging, run_until_signal

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

log = logging.getLogger("corral.edge")

# A worker that dies is restarted, but not faster than this.
_RESTART_BACKOFF_SECONDS = 1.0
# A worker dying this soon after its start, this many times in a row, stops the edge.
_QUICK_DEATH_SECONDS = 5.0
_MAX_QUICK_DEATHS = 3


def main(config: EdgeConfig) -> int:
    """Run the edge until SIGINT/SIGTERM; exit code for the process."""
    if config.workers <= 1:
        return _serve_here(config)
    return _supervise(config)


def _serve_here(config: EdgeConfig) -> int:
    from edge.app import serve
    from edge.errors import EdgeError

    try:
        return run_until_signal(lambda: serve(config))
    except (OSError, EdgeError) as exc:
        log.error("edge cannot serve on %s: %s", config.listen, exc)
        return 1


def _worker(config: EdgeConfig, index: int, log_level: int) -> None:
    """Entry point of one worker process (spawned: a fresh interpreter)."""
    configure_logging(logging.getLevelName(log_level))
    base = config.edge_id or None
    worker_config = (
        config if base is None else dataclasses.replace(config, edge_id=f"{base}/{index}")
    )
    raise SystemExit(_serve_here(worker_config))


def _supervise(config: EdgeConfig) -> int:
    """Start `workers` processes sharing the port (SO_REUSEPORT); restart any that dies;
    forward SIGTERM and wait for them within the grace period."""
    import multiprocessing  # only a supervisor needs it

    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    level = logging.getLogger().getEffectiveLevel()

    def start(index: int) -> BaseProcess:
        proc = ctx.Process(
            target=_worker, args=(config, index, level), name=f"corral-edge-{index}", daemon=False
        )
        proc.start()
        return proc

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers = {i: start(i) for i in range(config.workers)}
    started = dict.fromkeys(workers, time.monotonic())
    quick_deaths = dict.fromkeys(workers, 0)
    exit_code = 0
    log.info("edge supervising %d workers on %s", config.workers, config.listen)
    try:
        while exit_code == 0 and not stopping.wait(0.2):
            for index, proc in list(workers.items()):
                if proc.is_alive():
                    continue
                lived = time.monotonic() - started[index]
                quick_deaths[index] = quick_deaths[index] + 1 if lived < _QUICK_DEATH_SECONDS else 0
                if quick_deaths[index] >= _MAX_QUICK_DEATHS:
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
                started[index] = time.monotonic()
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
