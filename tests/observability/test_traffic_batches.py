"""Traffic reports written in batches: one transaction for many, counted once whatever fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from controlplane.metrics import Metrics
from controlplane.store.base import EventType, StoreUnavailableError, Write, WriteOutcome
from controlplane.store.memory import MemoryStore
from controlplane.traffic.book import TrafficBook
from controlplane.traffic.view import TrafficView
from corral.v1 import traffic_pb2
from tests.observability.test_traffic_book import LAYOUT, report
from tests.support.net import eventually


class _FailingStore(MemoryStore):
    """Fails the next put_all_if: before it reaches the store, or after it was applied (its
    answer lost on the way)."""

    fail_next = False
    applied = False

    async def put_all_if(self, writes: Sequence[Write]) -> WriteOutcome:
        failing, self.fail_next = self.fail_next, False
        if failing and not self.applied:
            raise StoreUnavailableError("put_all_if: the store did not answer")
        outcome = await super().put_all_if(writes)
        if failing:
            raise StoreUnavailableError("put_all_if: the answer was lost")
        return outcome


def _requests(view: TrafficView, now: int) -> int:
    return view.query(traffic_pb2.GetTrafficRequest(), now_ms=now).requests


async def test_reports_of_several_edges_share_one_revision() -> None:
    """Three edges reporting at once are written in one revision and one watch batch."""
    async with MemoryStore() as store:
        book = TrafficBook(store, LAYOUT, Metrics(), batch_seconds=0.2)
        now = int(time.time() * 1000)
        before = store.revision
        stream = store.watch_prefix(LAYOUT.traffic, before + 1)
        await asyncio.gather(
            *(book.report(report(f"edge-{i}", "a", range(1, 3), now)) for i in range(3))
        )
        batch = await anext(stream)
        await stream.aclose()
        assert {e.kv.mod_revision for e in batch.events} == {batch.revision}
        assert len(batch.events) == 6 and all(e.type is EventType.PUT for e in batch.events)


@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "answer-lost"])
async def test_a_failed_write_leaves_no_stale_copy_behind(applied: bool) -> None:
    """A failed write fails the report; resent it counts once, and later reports still count."""
    # The book's parsed copy is not trusted after a failure.
    async with _FailingStore() as store:
        store.applied = applied
        view = TrafficView(store, LAYOUT)
        follow = asyncio.create_task(view.run())
        try:
            book = TrafficBook(store, LAYOUT, Metrics(), view.stored, batch_seconds=0.01)
            now = int(time.time() * 1000)
            await book.report(report("edge-1", "a", range(1, 2), now))
            store.fail_next = True
            with pytest.raises(StoreUnavailableError):
                await book.report(report("edge-1", "a", range(2, 3), now))
            await book.report(report("edge-1", "a", range(2, 3), now))  # the edge resends
            # Acknowledged means stored: in the store, not only in the book's parsed copy.
            assert await eventually(lambda: _requests(view, now) == 4 or None)
            await book.report(report("edge-1", "a", range(3, 4), now))
            assert await eventually(lambda: _requests(view, now) == 6 or None)
        finally:
            follow.cancel()


async def test_another_replicas_write_is_merged_not_overwritten() -> None:
    """A record rewritten by another replica since this one wrote it keeps both counts."""
    async with MemoryStore() as store:
        view = TrafficView(store, LAYOUT)
        follow = asyncio.create_task(view.run())
        try:
            one = TrafficBook(store, LAYOUT, Metrics(), view.stored, batch_seconds=0.01)
            two = TrafficBook(store, LAYOUT, Metrics(), batch_seconds=0.01)
            now = int(time.time() * 1000)
            await one.report(report("edge-1", "a", range(1, 2), now))
            await two.report(report("edge-1", "b", range(1, 2), now))  # the edge restarted
            await one.report(report("edge-1", "c", range(1, 2), now))
            assert await eventually(lambda: _requests(view, now) == 6 or None)
        finally:
            follow.cancel()
