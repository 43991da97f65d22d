"""The dashboard's document rebuilt off the request path, watched traffic records taken in
a slice at a time, and the loop's stalls measured."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client import CollectorRegistry, Histogram

import controlplane
from controlplane import collector
from controlplane.dashboard.web import Dashboard
from controlplane.keys import KeyLayout
from controlplane.store.memory import MemoryStore
from controlplane.traffic.view import INTAKE_CELLS, TrafficView
from corral.config import ControlPlaneConfig
from corral.v1 import traffic_pb2
from tests.support.net import eventually, free_port

LAYOUT = KeyLayout.from_prefix("/corral/")


async def test_the_document_is_rebuilt_between_gets_and_served_as_built() -> None:
    """After one GET the document rebuilds by itself; a GET serves it as built, byte for byte."""
    address = f"127.0.0.1:{free_port()}"
    config = ControlPlaneConfig(
        listen=f"127.0.0.1:{free_port()}", store="memory", metrics_listen=address
    )
    dashboard = Dashboard(None, "127.0.0.1")
    ready = asyncio.Event()
    task = asyncio.create_task(controlplane.serve(config, ready=ready, dashboard=dashboard))
    url = f"http://{address}/dashboard/api/state"
    try:
        await ready.wait()
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                assert resp.status == 200
                first = await resp.read()
            built = dashboard._answer
            assert built is not None and built.body == first
            # No GET meanwhile: only the refresher can replace it.
            rebuilt = await eventually(lambda: dashboard._answer is not built or None)
            assert rebuilt
            held = dashboard._answer
            assert held is not None and held._gzipped is not None  # compressed off the GET
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                body = await resp.read()
            latest = dashboard._answer
            assert latest is not None and body in (held.body, latest.body)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _record(cells: int, requests: int) -> traffic_pb2.TrafficRecord:
    now = int(time.time() * 1000)
    record = traffic_pb2.TrafficRecord(edge_id="e1", start_unix_ms=now - 1000, end_unix_ms=now)
    for i in range(cells):
        record.cells.add(backend=f"gpu-{i:04d}", model="m", team="t", requests=requests)
    return record


def test_a_record_is_decoded_a_slice_of_cells_at_a_time() -> None:
    """Decoding 1,000 cells yields to the loop every INTAKE_CELLS, and the digest holds them all."""
    view = TrafficView(MemoryStore(), LAYOUT)
    steps = view._decode_sliced(b"k", _record(1000, 1).SerializeToString())
    yields = 0
    try:
        while True:
            steps.send(None)
            yields += 1
    except StopIteration as done:
        digest = done.value
    assert yields == 1000 // INTAKE_CELLS - 1
    assert digest is not None and len(digest.cells) == 1000


async def test_watched_records_reach_the_answers_in_order() -> None:
    """Watched rewrites and deletes go in order: answers end with the last value, raw copy too."""
    async with MemoryStore() as store:
        view = TrafficView(store, LAYOUT)
        follow = asyncio.create_task(view.run())
        try:
            start = int(time.time() * 1000)
            key = LAYOUT.traffic_record("fine", "e1", start - start % 10_000)
            other = LAYOUT.traffic_record("fine", "e2", start - start % 10_000)

            def total() -> int:
                return view.query(traffic_pb2.GetTrafficRequest()).requests

            await store.put(other, _record(10, 5).SerializeToString())
            for requests in range(1, 6):
                await store.put(key, _record(1000, requests).SerializeToString())
            await store.delete(other)
            assert await eventually(lambda: total() == 5000 or None)
            assert view.stored(other) is None and view.stored(key) is not None
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)


async def test_a_step_that_holds_the_loop_shows_in_the_lag_histogram() -> None:
    """A 60 ms step without a yield is observed as a tick at least 50 ms late."""
    lags = Histogram("lag", "test", buckets=(0.01, 0.05, 1.0), registry=CollectorRegistry())
    watcher = asyncio.create_task(collector.watch_loop(lags, tick=0.005))

    def late() -> float:
        return sum(
            s.value
            for m in lags.collect()
            for s in m.samples
            if s.name == "lag_bucket" and s.labels["le"] == "+Inf"
        ) - sum(
            s.value
            for m in lags.collect()
            for s in m.samples
            if s.name == "lag_bucket" and s.labels["le"] == "0.05"
        )

    try:
        assert await eventually(lambda: (late() == 0 and _count(lags) > 0) or None)
        held_until = time.perf_counter() + 0.06
        while time.perf_counter() < held_until:  # holds the loop: no await
            pass
        assert await eventually(lambda: late() >= 1 or None)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def _count(lags: Histogram) -> float:
    return sum(s.value for m in lags.collect() for s in m.samples if s.name == "lag_count")


def test_queries_between_the_steps_of_a_change_leave_every_sum_right() -> None:
    """Sums replaced one at a time, 1 m/5 m queries between, end as a view built from scratch."""
    from controlplane.traffic.digest import Digest
    from controlplane.traffic.records import FINE

    view = TrafficView(MemoryStore(), LAYOUT)
    t0 = FINE.bucket(int(time.time() * 1000)) - 200_000
    latest: dict[bytes, bytes] = {}
    for step in range(60):
        now = t0 + step * 3000
        for edge in ("e1", "e2"):
            # Late slices into the previous (complete) bucket too, every other step.
            start = FINE.bucket(now) - (10_000 if step % 2 and edge == "e1" else 0)
            key = LAYOUT.traffic_record("fine", edge, start)
            record = traffic_pb2.TrafficRecord(edge_id=edge, start_unix_ms=start, end_unix_ms=now)
            for i in range(3):
                record.cells.add(backend=f"b{i}", model=edge, requests=step + i + 1)
            latest[key] = value = record.SerializeToString()
            parsed = view._bucket_of(key)
            assert parsed is not None
            for _ in view._take_steps(key, parsed, Digest.of(record)):
                for window in (traffic_pb2.TRAFFIC_WINDOW_1M, traffic_pb2.TRAFFIC_WINDOW_5M):
                    for group in (
                        traffic_pb2.TRAFFIC_GROUP_BACKEND,
                        traffic_pb2.TRAFFIC_GROUP_MODEL,
                    ):
                        view.result(window, group, series=True, now_ms=now + 1)
            view._raw[key] = (value, 0)
        fresh = TrafficView(MemoryStore(), LAYOUT)
        for key, value in latest.items():
            fresh._put(key, value)
        for window in (traffic_pb2.TRAFFIC_WINDOW_1M, traffic_pb2.TRAFFIC_WINDOW_5M):
            for group in (traffic_pb2.TRAFFIC_GROUP_BACKEND, traffic_pb2.TRAFFIC_GROUP_MODEL):
                request = traffic_pb2.GetTrafficRequest(window=window, group_by=group, series=True)
                got = view.query(request, now_ms=now + 1)
                want = fresh.query(request, now_ms=now + 1)
                assert got == want, (step, window, group)
