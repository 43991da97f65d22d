"""The usage database's schemas: 2 (saved_tokens for cache hits) over a schema-1 file, 3 (a
new file clustered by time and id, with no index; older files keep their layout)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from edge.gateway.call import Call, new_id
from edge.gateway.records import COLUMNS, TABLE, row
from edge.gateway.sinks import SQLITE_SCHEMA_VERSION, SQLiteSink, sqlite_connect


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
    assert versions == [1, 2, 3] == list(range(1, SQLITE_SCHEMA_VERSION + 1))
    assert saved == (0,)


def _layout(path: Path) -> tuple[list[str], list[str]]:
    """The table's primary key columns in order, and its indexes."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        info = db.execute(f"PRAGMA table_info({TABLE})").fetchall()
        key = [name for _, name, _, _, _, pk in sorted(info, key=lambda c: c[5]) if pk]
        indexes = [r[1] for r in db.execute(f"PRAGMA index_list({TABLE})") if r[3] == "c"]
    return key, indexes


async def test_new_file_clustered_by_time_and_old_file_kept(tmp_path: Path) -> None:
    """New files key by (ts, id), no index; schema-2 files keep theirs; both store batches once."""
    old = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(old)) as db:
        db.execute("CREATE TABLE corral_schema (version INTEGER NOT NULL)")
        db.executemany("INSERT INTO corral_schema VALUES (?)", [(1,), (2,)])
        columns = ", ".join(f"{n} {k}" for n, k, _ in COLUMNS)
        db.execute(f"CREATE TABLE {TABLE} ({columns}) WITHOUT ROWID")
        db.execute(f"CREATE INDEX usage_ts ON {TABLE} (ts)")
        db.commit()
    rows = [
        row(Call(new_id(), "r", 0.0, 1_700_000_000.0 + i / 7, "chat", status=200), "e", 0.0)
        for i in range(100)
    ]
    for path in (tmp_path / "new.db", old):
        sink = SQLiteSink(str(path))
        await sink.open()
        await sink.write(rows)
        await sink.write(rows[:50])  # a replayed batch
        await sink.close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (100,)
            versions = [v for (v,) in db.execute("SELECT version FROM corral_schema")]
        assert versions == [1, 2, 3]
    assert _layout(tmp_path / "new.db") == (["ts", "id"], [])
    assert _layout(old) == (["id"], ["usage_ts"])
