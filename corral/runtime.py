"""Running a component's main coroutine as a process: event loop, signals, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def install_fast_loop() -> None:
    """Use uvloop where it is installed; asyncio's own loop otherwise."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_until_signal(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run main() until it returns or SIGINT/SIGTERM arrives; then cancel it.

    Cancellation is how components learn to shut down: each one catches nothing but
    finishes its own graceful shutdown, under its own time limit, as the cancel unwinds.
    """
    install_fast_loop()

    async def runner() -> None:
        task = asyncio.ensure_future(main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise

    try:
        asyncio.run(runner())
    except KeyboardInterrupt:
        return 130
    return 0
