"""The dashboard's data answer: gzipped for clients that ask, backends' JSON reused only
while it holds."""

from __future__ import annotations

import dataclasses
import gzip
from typing import Any

import aiohttp
import orjson

from controlplane.dashboard.answer import accepts_gzip
from controlplane.dashboard.backend_json import BackendJson
from controlplane.traffic.digest import CellSum, pack
from controlplane.traffic.query import Result, Row, compute
from controlplane.traffic.records import FINE
from corral.v1 import traffic_pb2, types_pb2
from tests.controlplane import harness as h
from tests.support.net import eventually, free_port


def test_accept_encoding_is_read_as_browsers_send_it() -> None:
    """gzip is used when listed (or `*`), not when refused with q=0 or absent."""
    assert accepts_gzip("gzip, deflate, br, zstd")
    assert accepts_gzip("br;q=1.0, GZIP;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip("gzip;q=0, deflate")
    assert not accepts_gzip("br")
    assert not accepts_gzip("")


async def test_the_same_document_gzipped_or_plain() -> None:
    """Asked with gzip, the answer is the plain document gzipped; without, it is plain."""
    address = f"127.0.0.1:{free_port()}"
    cfg = dataclasses.replace(h.config(), metrics_listen=address)
    url = f"http://{address}/dashboard/api/state"
    async with h.running(cfg) as cp, aiohttp.ClientSession(auto_decompress=False) as http:
        agent = h.AgentClient(cp)
        try:
            await agent.connect(h.register("gpu-a"))

            async def listed() -> dict[str, object] | None:
                async with http.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Encoding"] == "gzip"
                    assert resp.headers["Vary"] == "Accept-Encoding"
                    doc: dict[str, object] = orjson.loads(gzip.decompress(await resp.read()))
                return doc if doc["backends"] else None

            zipped = await eventually(listed)
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                assert "Content-Encoding" not in resp.headers
                plain = orjson.loads(await resp.read())
            assert plain["backends"] == zipped["backends"]
            [backend] = plain["backends"]
            assert backend["name"] == "gpu-a" and backend["health"] == "healthy"
            assert backend["requests"] == 0 and backend["ejected_by"] == []
        finally:
            await agent.close()


def _backend(health: int) -> types_pb2.Backend:
    backend = types_pb2.Backend(spec=h.spec("gpu-a", url="http://127.0.0.1:1"))
    backend.status.CopyFrom(h.status(health=health, running=3))
    return backend


def test_a_backends_json_follows_its_record_and_each_answer() -> None:
    """Own members are rebuilt only for a new record or drain reason; traffic ones every answer."""
    pieces = BackendJson()
    healthy = _backend(types_pb2.HEALTH_STATE_HEALTHY)
    first = pieces.own(healthy, "")
    assert pieces.own(healthy, "") is first
    assert b'"health":"healthy"' in first and b'"running":3' in first
    down = pieces.own(_backend(types_pb2.HEALTH_STATE_UNHEALTHY), "")
    assert b'"health":"unhealthy"' in down
    assert b'"drain_reason":"upgrade"' in pieces.own(healthy, "upgrade")
    models = tuple(m.id for m in healthy.status.models)
    assert pieces.facts(healthy) == ("gpu-a", models)
    renamed = _backend(types_pb2.HEALTH_STATE_HEALTHY)
    renamed.spec.name = "gpu-b"
    renamed.status.models.add(id="m1")
    assert pieces.facts(renamed) == ("gpu-b", (*models, "m1"))
    assert pieces.facts(healthy) == ("gpu-a", models)

    def answer(requests: int) -> tuple[Result, Row]:
        cell = CellSum()
        cell.requests = requests
        row = Row("gpu-a", cell)
        row.share, row.quantiles, row.series = 1.0, [0.5] * 6, [(requests, 0, 0.5)]
        result = Result()
        result.rows, result.buckets, result.span = [row], [0], 10.0
        return result, row

    one, row_one = answer(10)
    two, row_two = answer(20)
    doc = orjson.loads(orjson.dumps([pieces.backend(healthy, "", row_one, one, ["e1"])]))[0]
    assert (doc["requests"], doc["rps"], doc["ejected_by"]) == (10, 1.0, ["e1"])
    doc = orjson.loads(orjson.dumps([pieces.backend(healthy, "", row_two, two, [])]))[0]
    assert (doc["requests"], doc["series"], doc["health"]) == (20, [[20, 0, 0.5]], "healthy")


def test_quantiles_are_reused_only_for_the_same_histograms() -> None:
    """Unchanged histograms reuse the last quantiles, changed ones not; the memo keeps the last."""

    def total(latency_a: list[int]) -> dict[str, CellSum]:
        sums = {}
        for key, latency in (("a", latency_a), ("b", [0, 4])):
            cell = sums[key] = CellSum()
            cell.requests, cell.latency = sum(latency), pack(latency)
        return sums

    memo: dict[tuple[int, int], list[float]] = {}

    def rows(latency_a: list[int]) -> dict[str, Row]:
        group = traffic_pb2.TRAFFIC_GROUP_BACKEND
        result = compute(total(latency_a), [], None, group, 0, 10_000, FINE, memo)
        return {row.key: row for row in result.rows}

    first, again = rows([2]), rows([2])
    assert again["a"].quantiles is first["a"].quantiles
    assert again["b"].quantiles is first["b"].quantiles
    moved = rows([0, 0, 9])
    assert moved["a"].quantiles[:3] == [0.002, 0.002, 0.002] != first["a"].quantiles[:3]
    assert moved["b"].quantiles is first["b"].quantiles and len(memo) == 2


def test_a_backends_traffic_json_is_rebuilt_only_when_its_figures_change() -> None:
    """Unchanged counts, quantiles and points reuse serialized pieces; any change shows at once."""
    pieces = BackendJson()
    past: list[tuple[int, int, float]] = [(5, 0, 0.1)]

    def answer(requests: int, statuses: dict[int, int], point: tuple[int, int, float]) -> Any:
        cell = CellSum()
        cell.requests, cell.statuses = requests, statuses
        cell.errors = sum(n for s, n in statuses.items() if s >= 500)
        row = Row("gpu-a", cell)
        row.share, row.quantiles = 1.0, quantiles
        row.past, row.point, row.series = past, point, [*past, point]
        result = Result()
        result.rows, result.buckets, result.span = [row], [0, 10_000], float(requests)
        return orjson.loads(b"{" + pieces.traffic("gpu-a", row, result) + b"}")

    quantiles = [0.5] * 6
    one = answer(10, {200: 10}, (5, 0, 0.1))
    assert (one["requests"], one["rps"], one["errors"]) == (10, 1.0, {})
    assert one["series"] == [[5, 0, 0.1], [5, 0, 0.1]]
    counts = pieces._counts["gpu-a"][5]
    assert answer(10, {200: 10}, (5, 0, 0.1)) == one
    assert pieces._counts["gpu-a"][5] is counts
    two = answer(10, {200: 8, 502: 2}, (7, 2, 0.2))
    assert (two["error_rate"], two["errors"], two["series"][-1]) == (0.2, {"5xx": 2}, [7, 2, 0.2])
    quantiles = [1.0] * 6
    assert answer(10, {200: 8, 502: 2}, (7, 2, 0.2))["p99"] == 1.0
