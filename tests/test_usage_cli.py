"""`corral usage`: finds `corral up`'s records with no flags; reads SQLite, JSONL, PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.gateway.call import Call, new_id
from edge.gateway.postgres import PostgresSink
from edge.gateway.records import row
from edge.gateway.report import from_postgres
from edge.gateway.sinks import JsonLinesSink, SinkError, SQLiteSink
from tests.support.net import eventually
from tests.support.postgres import running_postgres
from tests.test_up import CORRAL, corral_up


def usage(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"HOME": str(home)} if home else {})}
    env.pop("XDG_STATE_HOME", None)
    return subprocess.run(
        [CORRAL, "usage", *args], capture_output=True, text=True, env=env, check=False
    )


def report(*args: str, home: Path | None = None) -> dict[str, Any]:
    done = usage(*args, "--json", home=home)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_next_to_corral_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests through `corral up` show up in `corral usage` run with no flags."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    async with corral_up("--demo") as up, up.client() as client:
        for _ in range(3):
            await client.chat.completions.create(
                model="corral-demo-echo", messages=[{"role": "user", "content": "hello"}]
            )

        def three() -> dict[str, Any] | None:
            done = usage("--json", "--by", "model", home=tmp_path)
            if done.returncode != 0:
                return None
            found: dict[str, Any] = json.loads(done.stdout)
            return found if found["total"]["requests"] >= 3 else None

        found = await eventually(three, within=20)
    assert (tmp_path / ".local/state/corral/usage.db").exists()
    demo = next(g for g in found["groups"] if g["name"] == "corral-demo-echo")
    assert demo["requests"] == 3 and demo["errors"] == 0
    assert demo["prompt_tokens"] > 0 and demo["p50_ms"] > 0
    table = usage("--by", "backend", home=tmp_path)
    assert table.returncode == 0 and "REQUESTS" in table.stdout and "demo-" in table.stdout


def records(count: int) -> list[Any]:
    now = time.time()
    out = []
    for i in range(count):
        call = Call(new_id(), f"r{i}", 0.0, now - i * 3600, "chat", model="m", team=f"t{i % 2}")
        call.status = 500 if i == 0 else 200
        if i == 1:  # a 200 whose stream was cut mid-way: an error too
            call.error = "stream_interrupted"
        call.prompt_tokens, call.completion_tokens, call.duration = 10, 5, 0.01 * (i + 1)
        out.append(row(call, "edge-a", 0.001))
    return out


async def test_postgres_and_jsonl(tmp_path: Path) -> None:
    """Reports by team from PostgreSQL, a JSON-lines file and SQLite agree, errors included."""
    rows = records(10)
    lines = JsonLinesSink(str(tmp_path / "u.jsonl"))
    await lines.open()
    await lines.write(rows)
    await lines.write(rows[:3])  # a replayed batch: counted once
    await lines.close()
    with (tmp_path / "u.jsonl").open("a") as foreign:  # other programs' lines: not records
        foreign.write('[1, 2]\n{"ts": "today", "id": "x"}\n{"note": "hello"}\n')
    sqlite = SQLiteSink(str(tmp_path / "u.db"))
    await sqlite.open()
    await sqlite.write(rows)
    await sqlite.close()
    from_sqlite = report("--sqlite", str(tmp_path / "u.db"), "--by", "team", "--since", "5h")
    with running_postgres() as pg:
        sink = PostgresSink(pg.dsn)
        await sink.open()
        await sink.write(rows)
        await sink.close()
        dsn = tmp_path / "dsn"
        dsn.write_text(pg.dsn)
        from_pg = report("--postgres-dsn-file", str(dsn), "--by", "team", "--since", "5h")
        config = tmp_path / "corral.yaml"
        config.write_text(f"edge:\n  usage:\n    sink: postgres\n    postgres_dsn_file: {dsn}\n")
        by_config = report("--config", str(config), "--by", "team", "--since", "5h")
        assert by_config["groups"] == from_pg["groups"]  # the same database, found by config
    from_file = report("--jsonl", str(tmp_path / "u.jsonl"), "--by", "team", "--since", "5h")
    for result in (from_pg, from_file, from_sqlite):
        assert result["total"]["requests"] == 5  # 0h..4h ago, within 5h
        assert result["total"]["errors"] == 2  # the 500 and the 200 cut short
        assert result["total"]["prompt_tokens"] == 50
        assert result["total"]["cost_usd"] == pytest.approx(0.005)
        teams = {g["name"]: g["requests"] for g in result["groups"]}
        assert teams == {"t0": 3, "t1": 2}
    assert from_pg["total"]["p95_ms"] == from_file["total"]["p95_ms"] == 50.0
    bad = usage("--since", "yesterday", "--sqlite", str(tmp_path / "none.db"))
    assert bad.returncode == 2 and "span" in bad.stderr
    missing = usage("--sqlite", str(tmp_path / "none.db"))
    assert missing.returncode == 1 and "no usage database" in missing.stderr
    dsn.write_text("postgresql://u:pw-SECRET@127.0.0.1:notaport/db")
    malformed = usage("--postgres-dsn-file", str(dsn))
    assert malformed.returncode == 1 and malformed.stderr.count("\n") == 1
    assert "Traceback" not in malformed.stderr and "pw-SECRET" not in malformed.stderr


async def test_postgres_without_asyncpg_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the postgres extra, reading PostgreSQL says what to install (no traceback)."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    with pytest.raises(SinkError, match=r"pip install 'corral\[postgres\]'"):
        await from_postgres("postgresql://127.0.0.1:1/db", "team", 0.0)
