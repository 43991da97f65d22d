"""The edge's long-lived background tasks: each has an owner (`owned`, a block that starts it
and, on leaving, cancels it and waits for it) and runs under `supervise`, so an unexpected
exception is logged, counted and followed by a restart instead of ending the task unseen."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from corral.backoff import Backoff
from corral.tasks import stopped

log = logging.getLogger(__name__)

#: A run that lasted this long before failing was healthy: the next restart starts quickly.
HEALTHY_RUN_SECONDS = 60.0


async def supervise(
    run: Callable[[], Awaitable[None]], what: str, on_crash: Callable[[], None]
) -> None:
    """Run `run` for good: an exception is logged and counted, and it starts again after a
    growing pause; returning ends it, and so does cancellation."""
    backoff = Backoff(base=0.5, cap=10.0)
    while True:
        started = time.monotonic()
        try:
            await run()
            return  # it ended by itself (nothing to follow)
        except Exception:
            on_crash()
            log.exception("%s failed; restarting it", what)
        if time.monotonic() - started > HEALTHY_RUN_SECONDS:
            backoff.reset()
        await asyncio.sleep(backoff.next())


@contextlib.asynccontextmanager
async def owned(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run `coro` as a task for the block; leaving the block cancels it and waits until it
    has ended. A cancellation of the owner while it waits is not swallowed."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        failed = await stopped(task)
        if failed is not None:
            log.error("task %s had failed", name, exc_info=failed)
