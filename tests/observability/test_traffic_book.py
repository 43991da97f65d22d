"""Storing traffic reports: exactly once per slice, however often and wherever it is sent."""

from __future__ import annotations

import asyncio
import time

import pytest

from controlplane.errors import InvalidArgumentError
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics
from controlplane.store.memory import MemoryStore
from controlplane.traffic.book import TrafficBook
from controlplane.traffic.intake import check_report
from controlplane.traffic.records import FINE
from controlplane.traffic.view import TrafficView
from controlplane.validation import MAX_MODEL_ID, check_status
from corral import traffic as hist
from corral.v1 import traffic_pb2, types_pb2
from edge.traffic import TrafficRecorder
from tests.support.net import eventually

LAYOUT = KeyLayout.from_prefix("/corral/")


def report(
    edge: str, incarnation: str, seqs: range, now_ms: int
) -> traffic_pb2.ReportTrafficRequest:
    request = traffic_pb2.ReportTrafficRequest(edge_id=edge, incarnation=incarnation)
    for seq in seqs:
        piece = request.slices.add(
            seq=seq, start_unix_ms=now_ms - 5000 + seq, end_unix_ms=now_ms - 4000 + seq
        )
        cell = piece.cells.add(backend="gpu-a", model="m", team="t", requests=2)
        cell.statuses[200] = 1
        cell.statuses[502] = 1
        latency = hist.empty()
        latency[hist.bucket_of(0.3)] = 2
        cell.latency.extend(latency)
        cell.prompt_tokens = 10
    return request


async def test_resent_and_concurrent_reports_count_once() -> None:
    """The same slices sent twice, and two replicas writing one record at once, count once."""
    async with MemoryStore() as store:
        view = TrafficView(store, LAYOUT)
        follow = asyncio.create_task(view.run())
        try:
            now = int(time.time() * 1000)
            # One replica guesses from its watched copy (stale or not), one reads the store.
            one = TrafficBook(store, LAYOUT, Metrics(), view.stored)
            two = TrafficBook(store, LAYOUT, Metrics())
            first = report("edge-1", "inc-1", range(1, 4), now)
            await one.report(first)
            await one.report(first)  # the answer was lost: the edge sends again
            await two.report(report("edge-1", "inc-1", range(2, 6), now))  # overlap, elsewhere
            # Two edges through two replicas at once (conditional writes, retried).
            await asyncio.gather(
                one.report(report("edge-2", "a", range(1, 30), now)),
                two.report(report("edge-3", "b", range(1, 30), now)),
            )

            def settled() -> traffic_pb2.GetTrafficResponse | None:
                got = view.query(traffic_pb2.GetTrafficRequest(), now_ms=now)
                return got if got.requests == 2 * (5 + 29 + 29) else None

            answer = await eventually(settled)
            [row] = answer.rows
            assert row.key == "gpu-a"
            assert row.error_rate == 0.5 and dict(row.errors) == {"5xx": 63}
            assert row.prompt_tokens == 630
            assert hist.bucket_of(row.latency_p95_seconds) == hist.bucket_of(0.3)
            by_team = view.query(
                traffic_pb2.GetTrafficRequest(group_by=traffic_pb2.TRAFFIC_GROUP_TEAM), now_ms=now
            )
            assert [(r.key, r.requests) for r in by_team.rows] == [("t", 126)]
            hour = view.query(
                traffic_pb2.GetTrafficRequest(window=traffic_pb2.TRAFFIC_WINDOW_1H), now_ms=now
            )
            assert hour.requests == 126  # the 60 s records hold the same counts
        finally:
            follow.cancel()


def test_reports_too_old_for_any_window_are_acknowledged_but_dropped() -> None:
    """A backlog older than an hour is acknowledged (the edge can drop it) but not stored."""
    now = int(time.time() * 1000)
    request = report("edge-1", "x", range(1, 3), now - 2 * 3600 * 1000)
    assert check_report(request, now_ms=now) == 2
    assert len(request.slices) == 0


def test_a_report_takes_every_model_id_registration_takes() -> None:
    """A cell's model may be as long as a registered model id, and no longer."""
    now = int(time.time() * 1000)
    for model, taken in (
        ("org/" + "x" * (MAX_MODEL_ID - 4), True),
        ("x" * (MAX_MODEL_ID + 1), False),
    ):
        status = types_pb2.BackendStatus(health=types_pb2.HEALTH_STATE_HEALTHY)
        status.models.add(id=model)
        request = report("edge-1", "x", range(1, 2), now)
        request.slices[0].cells[0].model = model
        if taken:
            check_status(status, "gpu-a")
            assert check_report(request, now_ms=now) == 1
        else:
            with pytest.raises(InvalidArgumentError):
                check_status(status, "gpu-a")
            with pytest.raises(InvalidArgumentError):
                check_report(request, now_ms=now)


def edge_report(edge: str, start_ms: int, levels: list[int]) -> traffic_pb2.ReportTrafficRequest:
    """An edge's 5 s slices from start_ms, a request each, with levels[i] in flight in the i-th."""
    recorder = TrafficRecorder()
    recorder.cut({}, [], {}, now_ms=start_ms)  # the first slice starts here
    at = start_ms
    for level in levels:
        at += 5000
        recorder.cell("gpu-a", "m", "t").requests += 1
        recorder.cut({}, [], {"gpu-a": level}, now_ms=at)
    return traffic_pb2.ReportTrafficRequest(
        edge_id=edge, incarnation="i", slices=list(recorder.pending)
    )


async def test_inflight_is_each_edges_latest_level() -> None:
    """In-flight sums each edge's latest fresh level, not every fresh record of it."""
    async with MemoryStore() as store:
        view = TrafficView(store, LAYOUT)
        follow = asyncio.create_task(view.run())
        try:
            book = TrafficBook(store, LAYOUT, Metrics(), view.stored)
            base = FINE.bucket(int(time.time() * 1000)) - 60_000
            # Three in flight throughout, over two 10 s buckets both fresh at `now`.
            await book.report(edge_report("edge-1", base, [3] * 6))
            # Two in flight, none in its last slice.
            await book.report(edge_report("edge-2", base, [2] * 5 + [0]))
            # Four in flight, last heard of 20 s before `now`.
            await book.report(edge_report("edge-3", base - 20_000, [4] * 6))
            now = base + 30_500

            def answered() -> traffic_pb2.GetTrafficResponse | None:
                got = view.query(traffic_pb2.GetTrafficRequest(), now_ms=now)
                return got if got.requests == 18 else None

            answer = await eventually(answered)
            assert [(row.key, row.inflight) for row in answer.rows] == [("gpu-a", 3)]
        finally:
            follow.cancel()


def test_cached_window_sums_follow_every_change() -> None:
    """Sliding 1 m and 5 m windows over changing records always equal sums computed from scratch."""
    # Records rewritten every second, late slices into the previous bucket, some deleted.
    from controlplane.traffic.records import FINE

    view = TrafficView(MemoryStore(), LAYOUT)
    t0 = FINE.bucket(int(time.time() * 1000)) - 400_000
    counts: dict[tuple[str, int], int] = {}
    for step in range(400):
        now = t0 + step * 1000
        start = FINE.bucket(now)
        previous = ("e1", start - 10_000)
        late = [previous] if step % 3 == 0 and previous in counts else []
        for edge, start in [*late, ("e1", FINE.bucket(now)), ("e2", FINE.bucket(now))]:
            counts[(edge, start)] = counts.get((edge, start), 0) + (3 if edge == "e1" else 1)
            record = traffic_pb2.TrafficRecord(edge_id=edge, start_unix_ms=start, end_unix_ms=now)
            record.cells.add(backend=f"b-{edge}", model="m", requests=counts[(edge, start)])
            view._put(LAYOUT.traffic_record("fine", edge, start), record.SerializeToString())
        start = FINE.bucket(now)
        if step % 97 == 50:  # an old record vanishes (its lease ran out)
            gone = ("e2", start - 120_000)
            view._delete(LAYOUT.traffic_record("fine", *gone))
            counts.pop(gone, None)
        for window, seconds in (
            (traffic_pb2.TRAFFIC_WINDOW_5M, 300),
            (traffic_pb2.TRAFFIC_WINDOW_1M, 60),
        ):
            got = view.query(
                traffic_pb2.GetTrafficRequest(window=window, series=True), now_ms=now + 1
            )
            first = FINE.bucket(now + 1 - seconds * 1000)
            want = {
                backend: sum(
                    n for (e, b), n in counts.items() if b >= first and f"b-{e}" == backend
                )
                for backend in ("b-e1", "b-e2")
            }
            assert {row.key: row.requests for row in got.rows} == {
                k: v for k, v in want.items() if v
            }, (step, window)
            assert sum(p.requests for row in got.rows for p in row.series) == got.requests
