"""The control plane and the garbage collector: decoded traffic cells untracked, pauses
measured, start-up frozen."""

from __future__ import annotations

import dataclasses
import gc

import aiohttp

from controlplane import collector
from controlplane.traffic.digest import CellSum, Digest
from controlplane.traffic.query import apply
from corral.v1 import traffic_pb2
from tests.controlplane import harness as h
from tests.support.net import free_port


def _record() -> traffic_pb2.TrafficRecord:
    record = traffic_pb2.TrafficRecord(edge_id="e1", start_unix_ms=10_000, end_unix_ms=20_000)
    for i in range(50):
        cell = record.cells.add(backend=f"gpu-{i}", model="m", team="t", requests=10)
        cell.statuses[200] = 8
        cell.statuses[502] = 2
        cell.latency.extend([1, 2, 3, 4])
        cell.ttft.extend([4, 3, 2, 1])
        cell.prompt_tokens, cell.completion_tokens = 100, 40
    return record


def test_decoded_cells_are_left_untracked_and_add_up() -> None:
    """After two collections no cell or error entry of a decoded record is tracked; cells add up."""
    digest = Digest.of(_record())
    gc.collect()
    gc.collect()
    assert digest.cells and not any(gc.is_tracked(cell) for cell in digest.cells)
    assert len(digest.errors) == 50 and not any(gc.is_tracked(e) for e in digest.errors)
    sums: dict[str, CellSum] = {}
    apply(sums, digest, traffic_pb2.TRAFFIC_GROUP_MODEL, add=True)
    total = sums["m"]
    assert (total.requests, total.errors, total.statuses) == (500, 100, {200: 400, 502: 100})
    assert total.prompt_tokens + total.completion_tokens == 50 * 140
    assert total.latency == CellSum.of(digest.cells[0]).latency * 50
    apply(sums, digest, traffic_pb2.TRAFFIC_GROUP_MODEL, add=False)
    assert (total.requests, total.errors, total.statuses, total.latency) == (0, 0, {}, 0)


async def test_collections_are_timed_in_the_metrics() -> None:
    """A full collection while the replica runs shows in its generation-2 pause count."""
    address = f"127.0.0.1:{free_port()}"
    cfg = dataclasses.replace(h.config(), metrics_listen=address)
    line = 'corral_controlplane_gc_pause_seconds_count{generation="2"}'
    async with h.running(cfg), aiohttp.ClientSession() as http:

        async def full_collections() -> float:
            async with http.get(f"http://{address}/metrics") as resp:
                text = await resp.text()
            return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))

        before = await full_collections()
        gc.collect()
        gc.collect()
        assert await full_collections() >= before + 2


def test_settling_freezes_what_start_up_built() -> None:
    """settle() leaves the objects alive so far out of later collections."""
    kept = [object() for _ in range(10)]
    try:
        collector.settle()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
