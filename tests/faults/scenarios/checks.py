"""What the fault scenarios wait for and check, over the cluster and the load's records."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.faults.report import summarize
from tests.faults.services import until
from tests.faults.topology import Cluster

# Generous deadlines for conditions that normally hold within seconds (2-core CI machines).
WITHIN = 30.0
LEAVE_SLACK = 1.0


def timed(check: Callable[[], Any], what: str, since: float, within: float = WITHIN) -> float:
    """Wait for check; the seconds from `since` until it held."""
    until(check, within, what)
    return round(time.time() - since, 3)


def leaves_routing(c: Cluster, backend: str) -> Callable[[], bool]:
    def check() -> bool:
        state = c.snapshot(c.live_cp())["backends"].get(backend)
        return state is None or state["health"] != "HEALTH_STATE_HEALTHY" or state["drained"]

    return check


def healthy_in_snapshot(c: Cluster, backend: str, cp: str | None = None) -> Callable[[], bool]:
    def check() -> bool:
        state = c.snapshot(cp or c.live_cp())["backends"].get(backend)
        return state is not None and state["health"] == "HEALTH_STATE_HEALTHY"

    return check


def streams_through(records: list[dict[str, Any]], backend: str, t: float) -> list[dict[str, Any]]:
    """Streams that were open on backend at time t."""
    return [
        r
        for r in records
        if r["ev"] == "stream" and r.get("backend") == backend and r["t0"] < t < r["t1"]
    ]


# Checks return what they found wrong (empty: all held). A scenario records its row with
# every violation first and asserts after, so a failing scenario still shows in the report.


def clients_harmed(records: list[dict[str, Any]]) -> list[str]:
    load = summarize(records)
    found = []
    if load.sent == 0:
        found.append("no request was sent")
    if load.failed:
        found.append(f"{load.failed} of {load.sent} requests failed: {load.failures[:3]}")
    if load.broken_streams:
        found.append(f"streams broken without an SSE error: {load.broken_streams[:3]}")
    return found


def traffic_not_moved(records: list[dict[str, Any]], backend: str, last: int = 20) -> list[str]:
    """The last requests went straight to other backends: none retried, none to backend."""
    tail = sorted((r for r in records if r["ev"] == "req"), key=lambda r: r["t0"])[-last:]
    if len(tail) < last:
        return [f"only {len(tail)} requests at the end, fewer than {last}"]
    touched = [r for r in tail if r.get("backend") == backend or r.get("route") == "retry"]
    return [f"traffic still touches {backend}: {touched[:3]}"] if touched else []


def check(condition: bool, problem: str) -> list[str]:
    return [] if condition else [problem]
