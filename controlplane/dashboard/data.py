"""The dashboard's one data document: cluster, backends, models, timeline, as plain JSON.

Built from what this replica already holds (the routing view, the watched traffic records,
its timeline) plus one store read of presence; everything a browser needs in one answer.
Secrets never appear: snapshots carry credential references only, and nothing here reads
them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from controlplane.dashboard.backend_json import BackendJson, traffic_members
from controlplane.dashboard.timeline import Timeline
from controlplane.replica import Parts
from controlplane.traffic.digest import Digest
from controlplane.traffic.records import FINE
from corral.v1 import admin_pb2, traffic_pb2

# Timeline entries for errors are drawn from this far back.
ERRORS_WINDOW_MS = 5 * 60 * 1000
MAX_ERRORS = 50
# Backends serialized between two yields to the loop (a build holds it a few ms at a time).
BACKENDS_PER_STEP = 200
# An edge whose last traffic report is older than this shows as not reporting.
REPORT_FRESH_MS = 30_000


async def state(
    parts: Parts, replica_id: str, timeline: Timeline, pieces: BackendJson | None = None
) -> dict[str, Any]:
    """Everything the page shows, as of now (backends as pre-serialized fragments, reused
    from `pieces` while they hold)."""
    pieces = pieces if pieces is not None else BackendJson()
    now = int(time.time() * 1000)
    view = parts.view
    traffic = parts.traffic
    five = traffic_pb2.TRAFFIC_WINDOW_5M
    by_backend = traffic.result(five, traffic_pb2.TRAFFIC_GROUP_BACKEND, series=True)
    await asyncio.sleep(0)
    by_model = traffic.result(five, traffic_pb2.TRAFFIC_GROUP_MODEL, series=False)
    await asyncio.sleep(0)
    fine = traffic.digests_of(FINE, since_ms=now - ERRORS_WINDOW_MS)
    edge_states = _edge_states(fine)
    ejected_by: dict[str, list[str]] = {}
    for edge_id, info in edge_states.items():
        if now - info["reported_unix_ms"] < REPORT_FRESH_MS:
            for name in info["ejected"]:
                ejected_by.setdefault(name, []).append(edge_id)
    backend_rows = {row.key: row for row in by_backend.rows}
    backends = []
    serving: dict[str, list[str]] = {}
    current = view.backends()
    names: set[str] = set()
    for index, backend in enumerate(current):
        if index and index % BACKENDS_PER_STEP == 0:
            await asyncio.sleep(0)
        name, ids = pieces.facts(backend)
        names.add(name)
        for model_id in ids:
            serving.setdefault(model_id, []).append(name)
        flag = view.drain_flag(name) if backend.drained else None
        backends.append(
            pieces.backend(
                backend,
                flag.reason if flag is not None else "",
                backend_rows.get(name),
                by_backend,
                ejected_by.get(name, []),
                name,
            )
        )
    pieces.keep_only(names, current)
    model_rows = {row.key: row for row in by_model.rows}
    aliases = {a.name: list(a.targets) for a in view.aliases()}
    model_ids = sorted(set(serving) | set(aliases))
    models = []
    for model_id in model_ids:
        names = set(serving.get(model_id, []))
        for target in aliases.get(model_id, []):
            names |= set(serving.get(target, []))
        models.append(
            {
                "id": model_id,
                "backends": sorted(names),
                "alias_targets": aliases.get(model_id, []),
                **traffic_members(model_rows.get(model_id), by_model),
            }
        )
    snapshot = view.current().snapshot
    return {
        "now_unix_ms": now,
        "replica": replica_id,
        "cluster": {
            "version": snapshot.version,
            "snapshot_age_seconds": max(0.0, (now - snapshot.created_unix_ms) / 1000.0)
            if snapshot.created_unix_ms
            else None,
            "replicas": await _replicas(parts),
            "edges": await _edges(parts, edge_states, now),
        },
        "totals": {
            "requests": by_backend.requests,
            "rps": by_backend.requests / by_backend.span,
            "edges_reporting": len(by_backend.edges),
            "decisions": dict(by_backend.decisions),
        },
        "backends": backends,
        "models": models,
        "timeline": _timeline(timeline, fine, now),
    }


def _edge_states(records: list[Digest]) -> dict[str, dict[str, Any]]:
    """Each edge's latest report."""
    latest: dict[str, Digest] = {}
    for record in records:
        held = latest.get(record.edge_id)
        if held is None or record.updated_unix_ms > held.updated_unix_ms:
            latest[record.edge_id] = record
    return {
        edge_id: {
            "reported_unix_ms": r.updated_unix_ms,
            "snapshot_version": r.snapshot_version,
            "snapshot_created_unix_ms": r.snapshot_created_unix_ms,
            "ejected": list(r.ejected),
            "listen_address": r.listen_address,
        }
        for edge_id, r in latest.items()
    }


async def _replicas(parts: Parts) -> list[dict[str, Any]]:
    _, kvs = await parts.store.get_prefix(parts.traffic.layout.controlplanes)
    out = []
    for kv in kvs:
        try:
            doc = orjson.loads(kv.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return sorted(out, key=lambda d: str(d.get("replica_id", "")))


async def _edges(parts: Parts, states: dict[str, dict[str, Any]], now: int) -> list[dict[str, Any]]:
    _, kvs = await parts.store.get_prefix(parts.traffic.layout.edges)
    connected: dict[str, admin_pb2.EdgeInfo] = {}
    for kv in kvs:
        parsed = admin_pb2.EdgeInfo()
        try:
            parsed.ParseFromString(kv.value)
        except DecodeError:  # a foreign value under our prefix: skip it
            continue
        connected[parsed.edge_id] = parsed
    out = []
    for edge_id in sorted(set(connected) | set(states)):
        info = connected.get(edge_id)
        st = states.get(edge_id, {})
        created = st.get("snapshot_created_unix_ms", 0)
        reported = st.get("reported_unix_ms", 0)
        out.append(
            {
                "edge_id": edge_id,
                "address": (info.listen_address if info else "") or st.get("listen_address", ""),
                "replica": info.controlplane_id if info else "",
                "subscribed": info is not None,
                "applied_version": info.applied_version if info else 0,
                "snapshot_version": st.get("snapshot_version", 0)
                or (info.applied_version if info else 0),
                "snapshot_age_seconds": (now - created) / 1000.0 if created else None,
                "reported_seconds_ago": (now - reported) / 1000.0 if reported else None,
                "ejected": st.get("ejected", []),
            }
        )
    return out


def _timeline(timeline: Timeline, records: list[Digest], now: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"unix_ms": e.unix_ms, "kind": e.kind, "backend": e.backend, "text": e.text}
        for e in timeline.events
    ]
    errors: dict[tuple[int, str, str, int], list[Any]] = {}
    # Newest records first; stop once enough entries are found (a record can hold an error
    # per backend: reading every record of 5 minutes at 1,000 backends would be slow).
    for record in sorted(records, key=lambda r: r.end_unix_ms, reverse=True):
        if len(errors) >= MAX_ERRORS or now - record.end_unix_ms > ERRORS_WINDOW_MS:
            break
        second = record.end_unix_ms // 1000
        for backend, model, status, count in record.errors:
            key = (second, backend, model, status)
            entry = errors.get(key)
            if entry is None:
                if len(errors) >= MAX_ERRORS:
                    continue  # older than the MAX_ERRORS kept (records come newest first)
                entry = errors[key] = [0, set()]
            entry[0] += count
            entry[1].add(record.edge_id)
    newest = sorted(errors.items(), key=lambda kv: kv[0][0], reverse=True)[:MAX_ERRORS]
    for (second, backend, model, status), (count, edges) in newest:
        via = ", ".join(sorted(edges))
        events.append(
            {
                "unix_ms": second * 1000,
                "kind": "error",
                "backend": backend,
                "text": f"{count} \u00d7 HTTP {status} for {model} (via {via})",
            }
        )
    events.sort(key=lambda e: e["unix_ms"], reverse=True)
    return events[: MAX_ERRORS * 2]
