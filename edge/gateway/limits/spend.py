"""Budget counters of the embedded store, kept in SQLite so a restart does not reset them.

The table lives in the edge's usage database (one file per edge); it holds one row per
budget period counter with its expiry, and expired rows are dropped on load. The worker
processes of one edge share the file: each adds what it counted since its last save to the
row (none overwrites another's) and reads back the totals, so each counts the others' spend.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from corral.config import EdgeConfig

_SCHEMA = """
CREATE TABLE IF NOT EXISTS corral_limit_counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires REAL NOT NULL
)
"""


def spend_path(config: EdgeConfig) -> str:
    """Where budgets persist: the usage file when records go to SQLite, else spend.db in the
    state dir (or beside the usage file); "" when there is nowhere (kept in memory only)."""
    from edge.gateway.usage import sink_kind, sqlite_path  # usage imports the sinks: lazily

    if sink_kind(config.usage) == "sqlite":
        return sqlite_path(config)
    if config.state_dir:
        return str(Path(config.state_dir) / "spend.db")
    usage_file = config.usage.path
    if usage_file and usage_file != "-":
        return str(Path(usage_file).parent / "spend.db")
    return ""


class SpendFile:
    """Rows of (counter key, value, expiry) in one SQLite file; safe to use from threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
        self._totals: dict[str, tuple[int, float]] = {}
        self._unwritten: dict[str, tuple[int, float]] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()

    def load(self, now: float) -> dict[str, tuple[int, float]]:
        """Every unexpired counter: key -> (value, expiry); expired ones are deleted."""
        with self._lock:
            self._db.execute("DELETE FROM corral_limit_counters WHERE expires <= ?", (now,))
            self._db.commit()
            rows = self._db.execute("SELECT key, value, expires FROM corral_limit_counters")
            return {key: (int(value), float(expires)) for key, value, expires in rows}

    def save(
        self, rows: Iterable[tuple[str, int, float]], now: float | None = None
    ) -> dict[str, tuple[int, float]]:
        """Add each (key, change, expiry) row's change to its counter, in one transaction, and
        read back every unexpired counter (key -> (total, expiry)); kept for `take_totals`."""
        now = time.time() if now is None else now
        with self._lock:
            # With what a failed save did not write: changes are deltas, none may be lost.
            unwritten, self._unwritten = self._unwritten, {}
            for key, change, expires in rows:
                if change:
                    before, until = unwritten.get(key, (0, expires))
                    unwritten[key] = (before + change, max(until, expires))
            changes = [(key, change, expires) for key, (change, expires) in unwritten.items()]
            try:
                if changes:
                    # One writer from here to the commit: the totals read below include it.
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "INSERT INTO corral_limit_counters (key, value, expires) VALUES (?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value, "
                        "expires = max(expires, excluded.expires)",
                        changes,
                    )
                found = self._db.execute(
                    "SELECT key, value, expires FROM corral_limit_counters WHERE expires > ?",
                    (now,),
                )
                totals = {key: (int(value), float(expires)) for key, value, expires in found}
                self._db.commit()
            except BaseException:
                self._db.rollback()
                self._unwritten = unwritten
                raise
            self._totals = totals
        return totals

    def take_totals(self) -> dict[str, tuple[int, float]]:
        """The totals the last save read back, once (empty when taken already)."""
        with self._lock:
            totals, self._totals = self._totals, {}
        return totals

    def close(self) -> None:
        with self._lock:
            self._db.close()
