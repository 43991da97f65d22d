"""Budgets without Valkey in an edge with several worker processes: every worker's store adds
its spend to the one SQLite row and counts the others' (`corral edge --workers N`)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from edge.gateway.limits import Limiter, LocalCounters, Refused, Subject
from edge.gateway.limits.policy import TOKENS, Limits, parse_budget
from edge.gateway.limits.spend import SpendFile
from edge.gateway.limits.store import Ask
from tests.limits.drive import Clock

KEY = "{corral}:lim:team:t:b:tokens:day"
DAY_MS = 86_400_000
TEAM = Subject("team", "research", Limits(budget=parse_budget(1000, unit=TOKENS, period="day")))


def _total(path: Path) -> int:
    """What the spend file counts, over its rows."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return sum(int(v) for (v,) in db.execute("SELECT value FROM corral_limit_counters"))


def _spend(store: LocalCounters, amount: int) -> None:
    """Count `amount` more of a budget (less: given back), as an edge's debt does."""
    store.lease_now([Ask(KEY, 10**9, 0, 0, adjust=amount, ttl_ms=DAY_MS, durable=True)])


def test_workers_add_their_spend_to_one_row(tmp_path: Path) -> None:
    """Two workers flush their spend to one file: the row holds the sum, each counts it."""
    path = tmp_path / "usage.db"
    files = [SpendFile(path), SpendFile(path)]
    workers = [LocalCounters(spend=spend, clock=Clock()) for spend in files]
    try:
        _spend(workers[0], 300)
        _spend(workers[1], 500)
        for worker in (*workers, workers[0]):  # the first sees the second's at its next flush
            worker.flush()
        assert _total(path) == 800
        assert [worker.used(KEY) for worker in workers] == [800, 800]
        _spend(workers[1], -200)  # a lease given back
        workers[1].flush()
        assert _total(path) == 600
    finally:
        for spend in files:
            spend.close()


async def test_the_upkeep_shows_each_worker_the_others_spend(tmp_path: Path) -> None:
    """A budget spent on one worker refuses on the other after the other's upkeep rounds."""
    path = tmp_path / "usage.db"
    clock = Clock()
    files = [SpendFile(path), SpendFile(path)]
    stores = [LocalCounters(spend=spend, clock=clock) for spend in files]
    first, second = (Limiter(store, edge_id=f"w{i}", clock=clock) for i, store in enumerate(stores))
    try:
        admitted = 0
        with pytest.raises(Refused):
            for _ in range(20):
                first.settle(await first.admit([TEAM], tokens=100))
                admitted += 1
        assert admitted == 10
        for store in (*stores, stores[1]):  # the second takes in what it read at its next one
            await store.save_spend()  # the upkeep, every second
        with pytest.raises(Refused) as refused:
            await second.admit([TEAM], tokens=100)
        assert refused.value.reason == "budget"
    finally:
        for limiter in (first, second):
            await limiter.close()
        for spend in files:
            spend.close()
    assert _total(path) == 1000  # spent, leases given back at close


def test_a_failed_save_is_added_by_the_next(tmp_path: Path) -> None:
    """Spend a save could not write (the file busy) is written by the next save, not lost."""
    path = tmp_path / "usage.db"
    spend = SpendFile(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        spend._db.execute("PRAGMA busy_timeout = 0")  # fail at once, not after 5 s
        other.execute("BEGIN IMMEDIATE")  # another worker writing
        with pytest.raises(sqlite3.OperationalError):
            spend.save([(KEY, 5, 4e9)])
        other.execute("ROLLBACK")
        assert spend.save([(KEY, 2, 4e9)])[KEY][0] == 7
    finally:
        other.close()
        spend.close()
