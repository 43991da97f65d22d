"""Health changes as this replica's routing view sees them, newest last, bounded."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from controlplane.state import RoutingView
from corral.v1 import types_pb2

MAX_EVENTS = 200


@dataclass(frozen=True, slots=True)
class Event:
    unix_ms: int
    kind: str  # health, drain, joined, left
    backend: str
    text: str


def _health(value: int) -> str:
    try:
        name = types_pb2.HealthState.Name(value)  # type: ignore[arg-type]  # any int
    except ValueError:
        return str(value)
    return name.removeprefix("HEALTH_STATE_").lower()


class Timeline:
    """Diffs the view at every version it reaches (`follow`) into events."""

    def __init__(self, view: RoutingView) -> None:
        self._view = view
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._last: dict[str, tuple[int, bool]] | None = None

    def observe(self, now_ms: int | None = None) -> None:
        """Record what changed since the last look (the first look records nothing)."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        current = {b.spec.name: b for b in self._view.backends()}
        seen = {name: (int(b.status.health), b.drained) for name, b in current.items()}
        last, self._last = self._last, seen
        if last is None:
            return
        for name, (health, drained) in sorted(seen.items()):
            backend = current[name]
            before = last.get(name)
            reason = f" ({backend.status.reason})" if backend.status.reason else ""
            if before is None:
                self._add(now, "joined", name, f"registered, {_health(health)}{reason}")
                continue
            if before[0] != health:
                text = f"{_health(before[0])} \u2192 {_health(health)}{reason}"
                self._add(now, "health", name, text)
            if before[1] != drained:
                flag = self._view.drain_flag(name)
                why = f" ({flag.reason})" if drained and flag is not None and flag.reason else ""
                self._add(now, "drain", name, ("drained" if drained else "undrained") + why)
        for name in sorted(set(last) - set(seen)):
            self._add(now, "left", name, "left routing (its agent is gone)")

    def _add(self, now: int, kind: str, backend: str, text: str) -> None:
        self.events.append(Event(now, kind, backend, text))

    async def follow(self) -> None:
        """Observe at every new version, until cancelled."""
        while True:
            changed = self._view.version_event()
            self.observe()
            await changed.wait()
