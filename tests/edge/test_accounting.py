"""edge/accounting.py: the requests over in one loop turn, accounted one by one in the next."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from edge.accounting import Accounting
from edge.gateway.call import Call
from edge.metrics import EdgeMetrics
from edge.recorder import Recorder


class _Recorder(Recorder):
    __slots__ = ("recorded",)

    def __init__(self) -> None:
        self.recorded: list[str] = []

    def record(self, call: Call) -> None:
        if call.id == "bad":
            raise RuntimeError("a broken recorder")
        self.recorded.append(call.id)


def _accounting() -> tuple[Accounting, _Recorder, EdgeMetrics]:
    # Real metrics: the compiled edge (edge/native.py) checks the types it is handed.
    recorder = _Recorder()
    owner = SimpleNamespace(recorder=recorder)
    metrics = EdgeMetrics()
    return Accounting(owner, metrics), recorder, metrics


def _counted(metrics: EdgeMetrics) -> float:
    value = metrics.registry.value(
        "corral_edge_requests_total", {"model": "m", "backend": "-", "status": "200"}
    )
    return value or 0.0


def _over(accounting: Accounting, name: str) -> None:
    accounting.over(Call(name, name, 0.0, 0.0, "chat"), "m", 200, "chat")


async def test_requests_over_in_one_turn_are_accounted_in_the_next() -> None:
    """Each one recorded and counted once, in order, after the turn that finished them."""
    accounting, recorder, metrics = _accounting()
    for name in ("a", "b", "c"):
        _over(accounting, name)
    assert recorder.recorded == [] and _counted(metrics) == 0  # not while answers are written
    await asyncio.sleep(0)
    assert recorder.recorded == ["a", "b", "c"] and _counted(metrics) == 3
    _over(accounting, "d")
    await asyncio.sleep(0)
    assert recorder.recorded == ["a", "b", "c", "d"]


async def test_one_failing_does_not_cost_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """A request whose accounting fails is logged; the ones after it are still recorded."""
    accounting, recorder, metrics = _accounting()
    for name in ("a", "bad", "c"):
        _over(accounting, name)
    await asyncio.sleep(0)
    assert recorder.recorded == ["a", "c"] and _counted(metrics) == 2
    assert "accounting for request bad failed" in caplog.text
