"""The usage database's schema 2 (saved_tokens for cache hits) over a schema-1 file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from edge.gateway.records import COLUMNS, TABLE
from edge.gateway.sinks import SQLITE_SCHEMA_VERSION, sqlite_connect


def test_schema_one_file_gains_saved_tokens(tmp_path: Path) -> None:
    """A file written by schema 1 gets the column (0 for old rows) and version 2, once."""
    path = tmp_path / "usage.db"
    old = [(n, k.replace(" NOT NULL", "")) for n, k, _ in COLUMNS if n != "saved_tokens"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE corral_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO corral_schema VALUES (1)")
        db.execute(f"CREATE TABLE {TABLE} ({', '.join(f'{n} {k}' for n, k in old)})")
        db.execute(f"INSERT INTO {TABLE} (id) VALUES ('r1')")
        db.commit()
    for _ in range(2):
        sqlite_connect(str(path), create=True).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM corral_schema")]
        saved = db.execute(f"SELECT saved_tokens FROM {TABLE} WHERE id = 'r1'").fetchone()
    assert versions == [1, 2] == list(range(1, SQLITE_SCHEMA_VERSION + 1))
    assert saved == (0,)
