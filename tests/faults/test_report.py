"""The fault suite's accounting: what counts as failed, broken, moved; the rendered page."""

from __future__ import annotations

from typing import Any

from tests.faults.report import COMMAND, ScenarioResult, last_touch, render, summarize


def req(t0: float, ok: bool = True, backend: str = "be2", route: str = "sticky") -> dict[str, Any]:
    return {"ev": "req", "t0": t0, "t1": t0 + 0.01, "ok": ok, "backend": backend, "route": route}


def test_summary_counts_failed_requests_and_broken_streams() -> None:
    """Failed requests and streams that ended without [DONE] or an error event are counted."""
    records = [
        req(1.0),
        req(2.0, ok=False),
        {"ev": "stream", "outcome": "complete"},
        {"ev": "stream", "outcome": "sse_error"},
        {"ev": "stream", "outcome": "broken"},
        {"ev": "stream_open"},
    ]
    load = summarize(records)
    assert (load.sent, load.failed, load.streams) == (2, 1, 3)
    assert load.stream_outcomes == {"complete": 1, "sse_error": 1, "broken": 1}
    assert [s["outcome"] for s in load.broken_streams] == ["broken"]


def test_last_touch_is_the_last_request_the_fault_still_reached() -> None:
    """Traffic has moved after the last request that failed, was retried or hit the backend."""
    records = [
        req(9.0, backend="be1"),  # before the fault: not counted
        req(10.5, backend="be1"),
        req(11.0, route="retry"),
        req(12.0, ok=False, backend=None),
        req(13.0),
    ]
    assert last_touch(records, 10.0, "be1") == 2.0
    assert last_touch([req(13.0)], 10.0, "be1") == 0.0


def test_page_shows_the_command_the_figures_and_failed_checks() -> None:
    """The rendered page has the command, one row per scenario and any failed check."""
    load = summarize([req(1.0), req(2.0)])
    page = render(
        [
            ScenarioResult("a", "Scenario A", "checks a", load, 1.5, "meaning", {"m": 0.25}),
            ScenarioResult(
                "b", "Scenario B", "checks b", load, None, "meaning", {}, violations=["too slow"]
            ),
        ]
    )
    assert COMMAND in page
    assert "| [Scenario A](#a) | 2 | 0 |" in page
    assert "1.50 s | passed |" in page
    assert "FAILED: too slow" in page
    assert "| m | 0.25 s |" in page
