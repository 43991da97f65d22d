"""corral.tasks.stopped: a task cancelled and waited for, its failure handed back, and the
waiter's own cancellation raised."""

from __future__ import annotations

import asyncio

import pytest

from corral.tasks import stopped


async def test_a_task_that_fails_as_it_stops_hands_back_its_exception() -> None:
    """The task's own failure is returned (and so retrieved), not raised in the waiter."""

    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("clean-up failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)  # let it start
    failed = await stopped(task)
    assert isinstance(failed, RuntimeError) and str(failed) == "clean-up failed"


async def test_a_task_cancelled_cleanly_gives_none() -> None:
    """A task that ends cancelled, as asked, is no failure."""
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    assert await stopped(task) is None and task.cancelled()


async def test_the_waiter_cancelled_meanwhile_is_cancelled() -> None:
    """A waiter cancelled while the task takes time to end is cancelled, not taken as the task's."""
    ending, release = asyncio.Event(), asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ending.set()
            await release.wait()
            raise

    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(stopped(task))
    async with asyncio.timeout(5):
        await ending.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not task.done()  # still ending: the waiter did not wait for it
    release.set()
    await asyncio.wait([task])
    assert task.cancelled()
