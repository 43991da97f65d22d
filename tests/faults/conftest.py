"""Fault-suite hooks: each test's outcome is kept on its item, so fixtures can add the
processes' logs to a failure report."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

OUTCOME = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, Any]:
    report = yield
    item.stash.setdefault(OUTCOME, {})[report.when] = report
    return report


def failed(item: pytest.Item) -> bool:
    """Whether the test's setup or body failed."""
    reports = item.stash.get(OUTCOME, {})
    return any(r.failed for r in reports.values())
