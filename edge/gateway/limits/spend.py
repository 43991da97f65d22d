"""Budget counters of the embedded store, kept in SQLite so a restart does not reset them.

The table lives in the edge's usage database (one file per edge); it holds one row per
budget period counter with its expiry, and expired rows are dropped on load.
"""

from __future__ import annotations

import sqlite3
import threading
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

    def save(self, rows: Iterable[tuple[str, int, float]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT INTO corral_limit_counters (key, value, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
                list(rows),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
