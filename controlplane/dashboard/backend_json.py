"""The dashboard's backends, serialized in pieces that are reused while they hold.

A backend's own members (spec, health, load, drain) are serialized once per change of its
record: the routing view hands out the same Backend object until the record changes. Its
traffic counts and quantiles are serialized once per change of them and its sparkline once
per change of its points (the traffic view hands out the same quantile list and past points
while they hold); only its rates and in-flight level are serialized per traffic answer (one
per second however many browsers poll). A backend's JSON object is the pieces joined,
handed to orjson as a Fragment, so a document of 1,000 backends costs a join per backend.
"""

from __future__ import annotations

from typing import Any

import orjson

from controlplane.traffic.query import NO_POINT, Point, Result, Row
from controlplane.traffic.records import errors_by_class
from corral.v1 import types_pb2


def word(enum: Any, value: int, prefix: str) -> str:
    """An enum value's name without its prefix, lower case (the number when unknown)."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def traffic_members(row: Row | None, result: Result) -> dict[str, Any]:
    """A group's traffic over the answer's window, as the page reads it."""
    if row is None:
        return {"requests": 0, "share": 0.0, "rps": 0.0, "error_rate": 0.0, "p50": 0.0,
                "p95": 0.0, "p99": 0.0, "ttft_p50": 0.0, "ttft_p95": 0.0, "errors": {},
                "series": [NO_POINT] * len(result.buckets), "tokens": 0}  # fmt: skip
    cell = row.cell
    quantiles = row.quantiles
    requests = cell.requests
    return {
        "requests": requests,
        "share": round(row.share, 5),
        "rps": round(requests / result.span, 3),
        "error_rate": round(cell.errors / requests, 5) if requests else 0.0,
        "errors": errors_by_class(cell.statuses),
        "p50": quantiles[0],
        "p95": quantiles[1],
        "p99": quantiles[2],
        "ttft_p50": quantiles[3],
        "ttft_p95": quantiles[4],
        "tokens": cell.prompt_tokens + cell.completion_tokens,
        # [requests, errors, p95 latency] per 10 s bucket, oldest first (sparklines)
        "series": row.series,
    }


def _own_members(backend: types_pb2.Backend, drain_reason: str) -> bytes:
    spec, status = backend.spec, backend.status
    load = status.load
    provider = spec.labels.get("provider", "")
    doc = {
        "name": spec.name,
        "type": "hosted:" + provider
        if provider
        else word(types_pb2.BackendType, spec.type, "BACKEND_TYPE_"),
        "health": word(types_pb2.HealthState, status.health, "HEALTH_STATE_"),
        "reason": status.reason,
        "models": [m.id for m in status.models],
        "running": load.running,
        "waiting": load.waiting,
        "kv_cache": load.kv_cache_usage if load.HasField("kv_cache_usage") else None,
        "drained": backend.drained,
        "drain_reason": drain_reason,
        "priority": spec.priority,
        "weight": spec.weight or 1.0,
    }
    return orjson.dumps(doc)[1:-1]


class BackendJson:
    """Every backend's JSON object, from its cached pieces."""

    def __init__(self) -> None:
        # name -> (the view's Backend object, drain reason, its serialized own members)
        self._own: dict[str, tuple[types_pb2.Backend, str, bytes]] = {}
        self._result: Result | None = None
        self._no_traffic = b""
        # name -> (requests, errors, tokens, quantiles, statuses, their serialized members)
        self._counts: dict[str, tuple[int, int, int, list[float], dict[int, int], bytes]] = {}
        # id of a Backend object -> (it, its name, its model ids)
        self._facts: dict[int, tuple[types_pb2.Backend, str, tuple[str, ...]]] = {}
        # name -> (the row's past points, its current point, the serialized series)
        self._series: dict[str, tuple[list[Point], Point, bytes]] = {}

    def facts(self, backend: types_pb2.Backend) -> tuple[str, tuple[str, ...]]:
        """The backend's name and model ids, read once per record (protobuf reads are slow)."""
        held = self._facts.get(id(backend))
        if held is not None and held[0] is backend:
            return held[1], held[2]
        name, models = backend.spec.name, tuple(m.id for m in backend.status.models)
        self._facts[id(backend)] = (backend, name, models)
        return name, models

    def own(self, backend: types_pb2.Backend, drain_reason: str, name: str = "") -> bytes:
        """The backend's own members (no braces), serialized once per change."""
        name = name or backend.spec.name
        held = self._own.get(name)
        if held is not None and held[0] is backend and held[1] == drain_reason:
            return held[2]
        members = _own_members(backend, drain_reason)
        self._own[name] = (backend, drain_reason, members)
        return members

    def traffic(self, name: str, row: Row | None, result: Result) -> bytes:
        """The traffic members (no braces): the counts and quantiles serialized once per
        change of them, the sparkline once per change of its points, the rates per answer."""
        if result is not self._result:
            self._result = result
            self._no_traffic = orjson.dumps({"inflight": 0, **traffic_members(None, result)})[1:-1]
        if row is None:
            return self._no_traffic
        cell = row.cell
        requests = cell.requests
        spent = cell.prompt_tokens + cell.completion_tokens  # tokens
        held = self._counts.get(name)
        if (
            held is None
            or held[0] != requests
            or held[1] != cell.errors
            or held[2] != spent
            or held[3] is not row.quantiles
            or held[4] != cell.statuses
        ):
            quantiles = row.quantiles
            counts = {
                "requests": requests,
                "error_rate": round(cell.errors / requests, 5) if requests else 0.0,
                "errors": errors_by_class(cell.statuses) if cell.statuses else {},
                "p50": quantiles[0],
                "p95": quantiles[1],
                "p99": quantiles[2],
                "ttft_p50": quantiles[3],
                "ttft_p95": quantiles[4],
                "tokens": spent,
            }
            held = self._counts[name] = (
                requests, cell.errors, spent, quantiles, dict(cell.statuses),
                orjson.dumps(counts)[1:-1],
            )  # fmt: skip
        line = self._series.get(name)
        if line is None or line[0] is not row.past or line[1] != row.point:
            # [requests, errors, p95 latency] per 10 s bucket, oldest first (sparklines)
            line = self._series[name] = (row.past, row.point, orjson.dumps(row.series))
        rates = orjson.dumps(
            {"inflight": row.inflight, "share": round(row.share, 5),
             "rps": round(requests / result.span, 3)}
        )[1:-1]  # fmt: skip
        return b"".join((held[5], b",", rates, b',"series":', line[2]))  # as traffic_members

    def backend(
        self,
        backend: types_pb2.Backend,
        drain_reason: str,
        row: Row | None,
        result: Result,
        ejected_by: list[str],
        name: str = "",
    ) -> orjson.Fragment:
        name = name or backend.spec.name
        own = self.own(backend, drain_reason, name)
        traffic = self.traffic(name, row, result)
        ejected = orjson.dumps(sorted(ejected_by)) if ejected_by else b"[]"
        return orjson.Fragment(
            b"".join((b"{", own, b",", traffic, b',"ejected_by":', ejected, b"}"))
        )

    def keep_only(self, names: set[str], backends: list[types_pb2.Backend]) -> None:
        """Forget backends no longer in the view (and records replaced since)."""
        if len(self._facts) > len(backends):
            self._facts = {id(b): held for b in backends if (held := self._facts.get(id(b)))}
        for table in (self._own, self._counts, self._series):
            for name in [n for n in table if n not in names]:
                del table[name]
