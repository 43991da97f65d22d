"""Which statuses an agent reports reach the store: changes that decide routing at once,
load-only changes when they matter and at most once per interval (controlplane/agents.py)."""

from __future__ import annotations

import enum
import math

from corral.kv_pressure import kv_level
from corral.v1 import types_pb2


class Action(enum.Enum):
    WRITE = "write"
    DEFER = "defer"
    SKIP = "skip"


def _same_apart_from_load(a: types_pb2.BackendStatus, b: types_pb2.BackendStatus) -> bool:
    return (
        a.health == b.health
        and a.reason == b.reason
        and a.server_version == b.server_version
        and list(a.capabilities) == list(b.capabilities)
        and list(a.models) == list(b.models)
    )


def load_moved(a: types_pb2.BackendLoad, b: types_pb2.BackendLoad) -> bool:
    """Whether the load changed enough to tell every edge: queue counts, or the KV-cache use
    crossing a level routing reads (corral.kv_pressure.KV_LEVELS)."""
    if a.running != b.running or a.waiting != b.waiting:
        return True
    if a.HasField("kv_cache_usage") != b.HasField("kv_cache_usage"):
        return True
    return kv_level(a.kv_cache_usage) != kv_level(b.kv_cache_usage)


class StatusThrottle:
    """Decides which reported statuses reach the store.

    Health, reason, models, capabilities and version changes are written at once. Load-only
    changes are written when they matter (queue counts changed, KV-cache use crossed one of
    the levels routing reads since the last write) and at most once per interval; a deferred one
    is kept (the latest wins) and written when the interval is up.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self.written: types_pb2.BackendStatus | None = None
        self._written_at = -math.inf
        self.pending: types_pb2.BackendStatus | None = None

    def offer(self, status: types_pb2.BackendStatus, now: float) -> Action:
        last = self.written
        if last is None or not _same_apart_from_load(status, last):
            return Action.WRITE
        if not load_moved(status.load, last.load):
            self.pending = None  # back to what the store holds: nothing to flush
            return Action.SKIP
        if now - self._written_at >= self._interval:
            return Action.WRITE
        self.pending = status
        return Action.DEFER

    def mark_written(self, status: types_pb2.BackendStatus, now: float) -> None:
        self.written = status
        self._written_at = now
        self.pending = None

    def due_at(self) -> float | None:
        """When the pending status may be written; None when nothing is pending."""
        if self.pending is None:
            return None
        return self._written_at + self._interval
