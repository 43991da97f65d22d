"""Keeping what the agent reports within the control plane's limits.

Servers can return anything (very long model lists, odd characters, duplicate ids); the
control plane rejects a status that breaks its limits with INVALID_ARGUMENT, which would end
the agent's stream. So every status is trimmed here before it leaves: text made printable and
cut to length, duplicate model ids dropped, lists capped, load counts and shares bounded.
"""

from __future__ import annotations

import math

from corral.v1 import types_pb2

MAX_REASON = 1000
MAX_TEXT = 256
MAX_MODELS = 1024
MAX_MODEL_ID = 512
MAX_METADATA = 64
MAX_METADATA_VALUE = 1024
MAX_QUEUE = 10_000_000  # running and waiting requests the control plane accepts


def printable(text: str, limit: int) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3] + "..."
    return cleaned


def bounded_load(load: types_pb2.BackendLoad) -> types_pb2.BackendLoad:
    """A copy of load within the control plane's limits (counts capped, KV share a fraction)."""
    out = types_pb2.BackendLoad()
    out.CopyFrom(load)
    out.running = min(out.running, MAX_QUEUE)
    out.waiting = min(out.waiting, MAX_QUEUE)
    if out.HasField("kv_cache_usage"):
        kv = out.kv_cache_usage
        if math.isfinite(kv):
            out.kv_cache_usage = min(max(kv, 0.0), 1.0)
        else:
            out.ClearField("kv_cache_usage")
    return out


def bounded_status(status: types_pb2.BackendStatus) -> types_pb2.BackendStatus:
    """A copy of status that the control plane's validation accepts."""
    out = types_pb2.BackendStatus(
        health=status.health,
        reason=printable(status.reason, MAX_REASON),
        load=bounded_load(status.load),
        capabilities=status.capabilities,
        server_version=printable(status.server_version, MAX_TEXT),
    )
    seen: set[str] = set()
    for model in status.models:
        if len(seen) >= MAX_MODELS:
            break
        if not model.id or model.id in seen or len(model.id) > MAX_MODEL_ID:
            continue
        if not model.id.isprintable():
            continue
        seen.add(model.id)
        item = out.models.add()
        item.CopyFrom(model)
        item.metadata.clear()
        for key in sorted(model.metadata)[:MAX_METADATA]:
            if key.isprintable() and len(key) <= MAX_TEXT:
                item.metadata[key] = printable(model.metadata[key], MAX_METADATA_VALUE)
    return out
