"""Where the embedded store keeps budgets, for every usage sink."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import orjson

from corral.config import EdgeConfig, UsageConfig
from edge.gateway.limits.spend import SpendFile, spend_path


def _config(tmp_path: Path, sink: str, path: str = "", state: bool = False) -> EdgeConfig:
    usage = dataclasses.replace(UsageConfig(), sink=sink, path=path)
    return dataclasses.replace(
        EdgeConfig(), usage=usage, state_dir=str(tmp_path / "state") if state else ""
    )


def test_sqlite_usage_file_holds_the_budgets(tmp_path: Path) -> None:
    """With records in SQLite, budgets share the usage file."""
    usage = str(tmp_path / "usage.db")
    assert spend_path(_config(tmp_path, "sqlite", usage)) == usage


def test_json_lines_file_is_never_opened_as_sqlite(tmp_path: Path) -> None:
    """With records in JSON lines, budgets go to spend.db beside them and the lines stay JSON."""
    lines = tmp_path / "usage.jsonl"
    lines.write_bytes(orjson.dumps({"request_id": "r1"}) + b"\n")
    path = spend_path(_config(tmp_path, "jsonl", str(lines)))
    assert path == str(tmp_path / "spend.db")
    spend = SpendFile(path)
    spend.save([("team:t:budget", 5, 1e12)])
    spend.close()
    assert [orjson.loads(line) for line in lines.read_bytes().splitlines()] == [
        {"request_id": "r1"}
    ]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM corral_limit_counters").fetchall() == [(5,)]


def test_state_dir_wins_for_other_sinks_and_nothing_means_memory(tmp_path: Path) -> None:
    """PostgreSQL or off: spend.db in the state dir; with no state dir and no file, memory."""
    assert spend_path(_config(tmp_path, "postgres", state=True)) == str(
        tmp_path / "state" / "spend.db"
    )
    assert spend_path(_config(tmp_path, "off")) == ""
    assert spend_path(_config(tmp_path, "jsonl", "-")) == ""
