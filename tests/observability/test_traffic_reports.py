"""An edge's traffic reports to a real control plane: every slice the edge builds is one the
control plane takes, and a slice it refuses anyway is dropped, never sent again and again."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from controlplane.traffic.intake import check_report
from corral.config import EdgeConfig
from corral.v1 import traffic_pb2
from edge.metrics import EdgeMetrics
from edge.traffic import MAX_CELLS, OTHER
from edge.traffic_reporter import TrafficReporter
from tests.controlplane.harness import config, running
from tests.observability.test_cluster_traffic import get_traffic
from tests.support.net import eventually, free_port


@contextlib.asynccontextmanager
async def reporting(address: str) -> AsyncIterator[tuple[EdgeMetrics, TrafficReporter]]:
    """An edge's metrics and its traffic reporter to the control plane at address."""
    edge = EdgeConfig(listen=f"127.0.0.1:{free_port()}", controlplane=(address,))
    metrics = EdgeMetrics()
    reporter = TrafficReporter(edge, "edge-1", metrics, None, ())
    try:
        yield metrics, reporter
    finally:
        reporter.close()


async def counted(address: str, requests: int) -> None:
    """Wait until the control plane's 5 m window holds exactly `requests` requests."""

    async def holds() -> bool:
        return (await get_traffic(address)).requests == requests

    await eventually(holds)


async def test_a_slice_of_more_cells_than_the_cap_is_taken_whole() -> None:
    """2,000 cells and 1,000 retry cells make a slice of MAX_CELLS the control plane takes."""
    async with running(config()) as address, reporting(address) as (metrics, reporter):
        recorder = metrics.traffic
        for team in ("a", "b"):
            for i in range(MAX_CELLS):
                recorder.cell(f"gpu-{i}", "m", team).requests += 1
        recorder.cell("gpu-7", "m", "a").requests += 50  # the busiest keeps its name
        for i in range(MAX_CELLS):
            metrics.retries.labels(f"gpu-{i}", "timeout").inc()
        piece = metrics.cut_traffic()
        assert piece is not None
        assert len(piece.cells) == MAX_CELLS
        names = {(c.backend, c.model, c.team) for c in piece.cells}
        assert ("gpu-7", "m", "a") in names and (OTHER, OTHER, OTHER) in names
        assert sum(c.requests for c in piece.cells) == 2 * MAX_CELLS + 50
        assert sum(c.retries for c in piece.cells) == MAX_CELLS
        check_report(traffic_pb2.ReportTrafficRequest(edge_id="edge-1", slices=[piece]))
        assert await reporter.flush()
        assert not recorder.pending and recorder.dropped == 0
        await counted(address, 2 * MAX_CELLS + 50)


async def test_a_clock_stepped_back_does_not_hold_up_reports() -> None:
    """A wall clock stepped back between two cuts gives a slice the control plane takes."""
    async with running(config()) as address, reporting(address) as (metrics, reporter):
        recorder = metrics.traffic
        now = int(time.time() * 1000)
        for at in (now, now - 200, now + 5000):  # NTP stepped the clock back 200 ms
            recorder.cell("gpu-a", "m", "t").requests += 1
            recorder.cut({}, [], {}, now_ms=at)
        assert all(p.start_unix_ms <= p.end_unix_ms for p in recorder.pending)
        assert await reporter.flush()
        assert not recorder.pending and recorder.dropped == 0
        await counted(address, 3)


async def test_a_refused_slice_is_dropped_and_the_rest_get_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slice the control plane refuses is dropped with one warning; the others are taken."""
    async with running(config()) as address, reporting(address) as (metrics, reporter):
        recorder = metrics.traffic
        now = int(time.time() * 1000)
        # The clock runs two minutes ahead for one cut (the control plane refuses a slice
        # ending more than 60 s after its own clock), then is set right.
        for at in (now - 5000, now + 120_000, now):
            recorder.cell("gpu-a", "m", "t").requests += 1
            recorder.cut({}, [], {}, now_ms=at)
        with caplog.at_level(logging.INFO, logger="edge.traffic_reporter"):
            assert await reporter.flush()
        assert not recorder.pending and recorder.dropped == 1 and reporter.sent == 2
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "in the future" in warnings[0].getMessage()
        await counted(address, 2)
        caplog.clear()
        recorder.cell("gpu-a", "m", "t").requests += 1
        recorder.cut({}, [], {}, now_ms=now + 5000)
        assert await reporter.flush()  # the refused slice is not sent again
        assert reporter.sent == 3 and recorder.dropped == 1 and not caplog.records
        await counted(address, 3)


async def test_slices_are_kept_while_the_control_plane_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A control plane that cannot be reached costs nothing: its slices are sent once it is up."""
    address = f"127.0.0.1:{free_port()}"
    async with reporting(address) as (metrics, reporter):
        recorder = metrics.traffic
        recorder.cell("gpu-a", "m", "t").requests += 1
        recorder.cut({}, [], {})
        with caplog.at_level(logging.INFO, logger="edge.traffic_reporter"):
            assert not await reporter.flush()
        assert len(recorder.pending) == 1 and recorder.dropped == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        async with running(config(listen=address)):
            assert await reporter.flush()
            assert not recorder.pending and recorder.dropped == 0
            await counted(address, 1)
