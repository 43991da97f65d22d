"""Usage records in a real PostgreSQL: schema, idempotent batches, a dead sink spooled and
replayed exactly once, and the SQLite and JSON-lines sinks beside it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from corral.config import EdgeConfig, Secret, UsageConfig
from edge.exposition import Registry
from edge.gateway.call import Call, new_id
from edge.gateway.lifetimes import recording
from edge.gateway.postgres import SCHEMA_VERSION, PostgresSink
from edge.gateway.records import TABLE, as_dict, row
from edge.gateway.sinks import JsonLinesSink, SQLiteSink
from edge.gateway.spool import spool_file
from edge.gateway.usage import UsageRecorder, open_sink
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually
from tests.support.postgres import PostgresServer, running_postgres

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def calls(count: int, model: str = "m") -> list[Call]:
    out = []
    for i in range(count):
        call = Call(new_id(), f"r{i}", 0.0, 1_700_000_000.0 + i, "chat", model=model)
        call.status, call.prompt_tokens, call.completion_tokens = 200, 10 + i, 5
        out.append(call)
    return out


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
    finally:
        await conn.close()


async def fresh(postgres: PostgresServer, name: str) -> str:
    """A new empty database on the server; its DSN."""
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return postgres.dsn.rsplit("/", 1)[0] + f"/{name}"


async def test_schema_and_idempotent_batches(postgres: PostgresServer) -> None:
    """Edges starting together migrate once; a batch written twice is stored once."""
    dsn = await fresh(postgres, "schema")
    sinks = [PostgresSink(dsn) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in sinks))
    rows = [row(c, "edge-a", 0.0) for c in calls(50)]
    await sinks[0].write(rows)
    await sinks[1].write(rows)
    assert await count_rows(dsn) == 50
    conn = await asyncpg.connect(dsn)
    try:
        versions = await conn.fetch("SELECT version FROM corral_schema")
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        first = await conn.fetchrow(f"SELECT * FROM {TABLE} WHERE request_id = 'r3'")
    finally:
        await conn.close()
    assert [v[0] for v in versions] == list(range(1, SCHEMA_VERSION + 1))
    assert {"usage_ts", "usage_team_ts", "usage_key_ts", "usage_model_ts"} <= indexes
    assert first["prompt_tokens"] == 13 and first["ts"].timestamp() == 1_700_000_003.0
    for sink in sinks:
        await sink.close()


async def test_dead_database_spooled_then_replayed(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """With the database down, records go to the spool; when it is back, each lands once."""
    dsn = await fresh(postgres, "spool")
    config = EdgeConfig(
        usage=UsageConfig(sink="postgres", postgres_dsn=Secret(dsn), write_timeout_seconds=2.0),
        state_dir=str(tmp_path),
    )
    sink = open_sink(config)
    assert isinstance(sink, PostgresSink)
    await sink.open()
    spool = tmp_path / "spool.jsonl"
    recorder = UsageRecorder(sink, config.usage, "edge-a", spool)
    for call in calls(30):
        recorder.record(call)
    await recorder.flush()
    assert recorder.counts["written"] == 30
    postgres.stop()
    try:
        for call in calls(40):
            recorder.record(call)
        await recorder.flush()
        assert recorder.counts["spooled"] == 40 and spool.exists()
    finally:
        postgres.start()
    for call in calls(5):
        recorder.record(call)
    recorder._last_replay = 0.0  # replay now, not after the pause between passes
    await recorder.flush()
    assert recorder.counts["replayed"] == 40 and not spool.exists()
    recorder._last_replay = 0.0
    await recorder.flush()  # nothing left to replay: nothing doubled
    assert await count_rows(dsn) == 75
    await sink.close()


async def test_sqlite_and_jsonl(tmp_path: Path) -> None:
    """The SQLite sink ignores a repeated batch; JSON lines hold one object per record."""
    rows = [row(c, "edge-a", 0.5) for c in calls(10)]
    sqlite_sink = SQLiteSink(str(tmp_path / "u.db"))
    await sqlite_sink.open()
    await sqlite_sink.write(rows)
    await sqlite_sink.write(rows)
    await sqlite_sink.close()
    db = sqlite3.connect(tmp_path / "u.db")
    assert db.execute(f"SELECT count(*), sum(cost_usd) FROM {TABLE}").fetchone() == (10, 5.0)
    db.close()
    lines = JsonLinesSink(str(tmp_path / "u.jsonl"))
    await lines.open()
    await lines.write(rows)
    await lines.close()
    parsed = [orjson.loads(x) for x in (tmp_path / "u.jsonl").read_bytes().splitlines()]
    assert [p["request_id"] for p in parsed] == [f"r{i}" for i in range(10)]
    assert parsed[0]["edge"] == "edge-a" and parsed[0]["prompt"] is None


async def test_hung_database_never_slows_requests(
    postgres: PostgresServer, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """With PostgreSQL frozen, requests go on and records spool; once back, each lands once."""
    # Body logging keeps the team's prompts.
    dsn = await fresh(postgres, "hung")
    usage = UsageConfig(
        sink="postgres",
        postgres_dsn=Secret(dsn),
        flush_interval_seconds=0.1,
        write_timeout_seconds=0.5,
        body_logging_teams=("default",),
    )
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        edge = await start_edge(snapshots, usage=usage)
        await edge.wait_version(1)
        client = edge.client()
        messages: Any = [{"role": "user", "content": "remember me"}]

        async def ask(count: int) -> list[float]:
            took = []
            for _ in range(count):
                started = time.monotonic()
                await client.chat.completions.create(model=MODEL, messages=messages)
                took.append(time.monotonic() - started)
            return took

        await ask(5)
        await eventually(lambda: _rows_are(dsn, 5))
        postgres.pause()
        try:
            took = await ask(20)

            async def spooled() -> bool:
                return _metric(await edge.metrics(), "spooled") > 0

            await eventually(spooled)
        finally:
            postgres.resume()
        # Nothing the request did waited on the database (the writer's timeout is 0.5 s).
        assert max(took) < 2.0, took
        await eventually(lambda: _rows_are(dsn, 25), within=20)

        # A write abandoned at its timeout may still commit once the database is back, so
        # the rows can all be there before the spool's replay (idempotent) has run.
        async def replayed() -> bool:
            return _metric(await edge.metrics(), "replayed") >= 1

        await eventually(replayed, within=20)
    conn = await asyncpg.connect(dsn)
    try:
        row_ = await conn.fetchrow(f"SELECT prompt, completion, team FROM {TABLE} LIMIT 1")
        distinct = await conn.fetchval(f"SELECT count(DISTINCT id) FROM {TABLE}")
    finally:
        await conn.close()
    assert distinct == 25
    assert row_["team"] == "default" and "remember me" in row_["prompt"]
    assert "remember me" in row_["completion"]  # the fake echoes the prompt


async def _rows_are(dsn: str, count: int) -> bool:
    return await count_rows(dsn) == count


def _metric(text: str, outcome: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'corral_edge_usage_records_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_spool_of_a_dead_process_is_adopted(tmp_path: Path) -> None:
    """A process that starts after a crash replays the spool the dead one left behind."""
    gone = await asyncio.create_subprocess_exec("true")  # a pid that no longer runs
    await gone.wait()
    config = EdgeConfig(state_dir=str(tmp_path), usage=UsageConfig(flush_interval_seconds=0.05))
    orphan = spool_file(config, "edge-a", gone.pid)
    assert orphan is not None
    rows = [row(c, "edge-a", 0.0) for c in calls(7)]
    orphan.write_bytes(b"".join(orjson.dumps(as_dict(r)) + b"\n" for r in rows) + b'{"cut')
    async with recording(config, "edge-a", Registry()) as recorder:
        recorder._last_replay = 0.0
        await recorder.flush()
        assert recorder.counts["replayed"] == 7
    assert not orphan.exists() and not any(
        p.name.startswith("usage-spool") for p in os.scandir(tmp_path)
    )
    db = sqlite3.connect(tmp_path / "usage.db")
    assert db.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (7,)
    db.close()


async def test_a_nul_in_a_text_field_does_not_fail_its_batch(postgres: PostgresServer) -> None:
    """A NUL in a record's text (a logged prompt, a model) is stored as U+FFFD, with its batch."""
    dsn = await fresh(postgres, "nul")
    sink = PostgresSink(dsn)
    await sink.open()
    batch = calls(3)
    batch[1].model = "evil\x00model"
    await sink.write([row(c, "edge-a", 0.0) for c in batch])
    await sink.close()
    assert await count_rows(dsn) == 3
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval(f"SELECT model FROM {TABLE} WHERE request_id = 'r1'")
    finally:
        await conn.close()
    assert stored == "evil\ufffdmodel"
