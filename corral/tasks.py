"""Stopping a task, shared by every component: cancel it and wait until it has ended,
without ever swallowing the cancellation of the one who waits (a `suppress(CancelledError)`
around `await task` would take the waiter's own cancellation for the task's); and taking
the outcome of a task nobody awaits any more."""

from __future__ import annotations

import asyncio
from typing import Any


async def stopped(task: asyncio.Future[Any]) -> BaseException | None:
    """Cancel `task` and wait until it has ended; the exception it failed with, if any
    (taken: never reported as unretrieved). A cancellation of the caller while it waits is
    not swallowed: it is raised, and `task` may then still be ending."""
    task.cancel()
    # asyncio.wait neither raises the task's CancelledError nor hides the caller's own.
    await asyncio.wait([task])
    return None if task.cancelled() else task.exception()


def retrieved(task: asyncio.Future[Any]) -> None:
    """A done callback: takes the task's exception, which whoever cared about has seen (or
    has gone), so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
