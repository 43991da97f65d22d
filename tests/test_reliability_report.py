"""docs/RELIABILITY.md cannot flatter: failed scenarios keep their row, and the commit and date
measured are stamped."""

from __future__ import annotations

import re

from tests.faults.report import LoadSummary, ScenarioResult, commit, render


def _row(key: str, violations: list[str]) -> ScenarioResult:
    return ScenarioResult(
        key=key,
        title=f"scenario {key}",
        checks="checked things",
        load=LoadSummary(10, 1 if violations else 0, 0, {}, [], []),
        moved_seconds=None,
        moved_meaning="-",
        violations=violations,
    )


def test_failed_scenarios_keep_their_row_and_the_commit_is_stamped() -> None:
    """A failed scenario is listed as FAILED with its violations; commit and date are named."""
    text = render([_row("ok", []), _row("bad", ["1 of 10 requests failed"])])
    assert "| [scenario ok](#ok) | 10 | 0 |" in text and "| passed |" in text
    assert "| [scenario bad](#bad) | 10 | 1 |" in text
    assert "FAILED: 1 of 10 requests failed" in text
    assert f"at commit `{commit()}`" in text
    assert re.search(r"Produced on \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", commit())
