"""The backend's reported health: raw probe verdicts smoothed by hysteresis.

One slow or failed probe cycle does not flap a backend: leaving a state takes `threshold`
consecutive cycles that disagree with it (default 2), and the state taken is the latest
verdict. Two exceptions, because the server says so itself: LOADING is entered at once
(llama.cpp's 503 "Loading model" is a statement, not a symptom), and a server that was
loading is reported up as soon as it answers normally. The first verdict is taken as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from corral.v1 import types_pb2

HealthState: TypeAlias = types_pb2.HealthState.ValueType
LOADING = types_pb2.HEALTH_STATE_LOADING
UNHEALTHY = types_pb2.HEALTH_STATE_UNHEALTHY


@dataclass
class HealthTracker:
    threshold: int = 2
    state: HealthState = types_pb2.HEALTH_STATE_UNSPECIFIED
    reason: str = "not probed yet"
    _pending: int = 0

    def observe(self, verdict: HealthState, reason: str) -> bool:
        """Feed one cycle's verdict; True when the reported state or reason changed."""
        before = (self.state, self.reason)
        at_once = (
            self.state in (types_pb2.HEALTH_STATE_UNSPECIFIED, verdict)
            or verdict == LOADING
            or (self.state == LOADING and verdict != UNHEALTHY)
        )
        if at_once:
            self._take(verdict, reason)
        else:
            self._pending += 1
            if self._pending >= self.threshold:
                self._take(verdict, reason)
        return (self.state, self.reason) != before

    def _take(self, verdict: HealthState, reason: str) -> None:
        self.state = verdict
        self.reason = reason
        self._pending = 0
