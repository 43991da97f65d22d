"""Usage rows as stored: absent values NULL and flags true/false in every sink (rows carry
them as sentinels and 0/1), batches across the SQLite sink's multi-row statements whole, and
a flush that takes only what was pending when it began."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from corral.config import UsageConfig
from edge.gateway.call import Call, new_id
from edge.gateway.postgres import PostgresSink
from edge.gateway.records import NAMES, NO_TTFT, TABLE, Row, as_dict, from_dict, row
from edge.gateway.sinks import (
    SHAREABLE_TOGETHER,
    JsonLinesSink,
    Shapes,
    SQLiteSink,
    sqlite_statement,
)
from edge.gateway.usage import UsageRecorder
from tests.support.postgres import PostgresServer, running_postgres

BARE_ID = "bare"
FULL_ID = "full"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def bare() -> Call:
    """A refused request: no answer, no tokens, nothing optional."""
    return Call(BARE_ID, BARE_ID, 0.0, 1_700_000_000.0, "chat", status=401)


def full() -> Call:
    """A streamed, estimated, guarded, body-logged answer: every optional value set."""
    call = Call(FULL_ID, "client-id", 0.0, 1_700_000_001.0, "chat", status=200, stream=True)
    call.estimated, call.ttft, call.duration = True, 0.0125, 0.5
    call.guard, call.prompt, call.completion = {"email": 2}, b'{"p":1}', b"answer"
    return call


def stored(found: dict[str, Any]) -> dict[str, Any]:
    """The optional values and flags of a stored record, flags as booleans."""
    return {
        "ttft_ms": found["ttft_ms"],
        "guard": found["guard"],
        "prompt": found["prompt"],
        "completion": found["completion"],
        "stream": bool(found["stream"]),
        "estimated": bool(found["estimated"]),
    }


EXPECTED: dict[str, dict[str, Any]] = {
    BARE_ID: {
        "ttft_ms": None,
        "guard": None,
        "prompt": None,
        "completion": None,
        "stream": False,
        "estimated": False,
    },
    FULL_ID: {
        "ttft_ms": 12.5,
        "guard": '{"email":2}',
        "prompt": '{"p":1}',
        "completion": "answer",
        "stream": True,
        "estimated": True,
    },
}


def assert_stored(path: Path, batch: list[Row]) -> None:
    """Every row of `batch` is in the SQLite file once, with its own values (flags as 0/1)."""
    found = sqlite_records(path)
    assert len(found) == len(batch)
    for values in batch:
        expected = as_dict(values)
        expected["stream"] = int(expected["stream"])
        expected["estimated"] = int(expected["estimated"])
        assert found[values[0]] == expected


def sqlite_records(path: Path) -> dict[str, dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in db.execute(f"SELECT * FROM {TABLE}")}
    finally:
        db.close()


def both_forms() -> list[list[Row]]:
    """The two rows as the recorder makes them, and as replayed from a spool (JSON form)."""
    rows = [row(bare(), "edge-a", 0.0), row(full(), "edge-a", 0.25)]
    replayed = [from_dict(orjson.loads(orjson.dumps(as_dict(r)))) for r in rows]
    return [rows, replayed]


@pytest.mark.parametrize("form", [0, 1], ids=["recorded", "replayed"])
async def test_sqlite_stores_absent_values_as_null(tmp_path: Path, form: int) -> None:
    """SQLite holds NULL for absent values and 0/1 flags, from fresh rows and spooled ones."""
    sink = SQLiteSink(str(tmp_path / "u.db"))
    await sink.open()
    await sink.write(both_forms()[form])
    await sink.close()
    found = sqlite_records(tmp_path / "u.db")
    assert {k: stored(v) for k, v in found.items()} == EXPECTED
    assert found[FULL_ID]["stream"] == 1 and found[BARE_ID]["estimated"] == 0
    assert found[FULL_ID]["cost_usd"] == 0.25 and found[FULL_ID]["request_id"] == "client-id"


async def test_jsonl_holds_the_json_form(tmp_path: Path) -> None:
    """JSON lines carry null and true/false, not the rows' sentinels."""
    sink = JsonLinesSink(str(tmp_path / "u.jsonl"))
    await sink.open()
    await sink.write(both_forms()[0])
    await sink.close()
    lines = [orjson.loads(x) for x in (tmp_path / "u.jsonl").read_bytes().splitlines()]
    assert {p["id"]: stored(p) for p in lines} == EXPECTED
    assert lines[1]["stream"] is True and lines[0]["stream"] is False
    assert list(lines[0]) == list(NAMES)


async def test_postgres_stores_absent_values_as_null(postgres: PostgresServer) -> None:
    """PostgreSQL holds NULL for absent values and booleans, from fresh and spooled rows."""
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute("CREATE DATABASE rows")
    finally:
        await conn.close()
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/rows"
    sink = PostgresSink(dsn)
    await sink.open()
    conn = await asyncpg.connect(dsn)
    try:
        for rows in both_forms():
            await conn.execute(f"DELETE FROM {TABLE}")
            await sink.write(rows)
            found = {r["id"]: dict(r) for r in await conn.fetch(f"SELECT * FROM {TABLE}")}
            assert {k: stored(v) for k, v in found.items()} == EXPECTED
            assert found[FULL_ID]["stream"] is True and found[BARE_ID]["estimated"] is False
    finally:
        await conn.close()
        await sink.close()


async def test_sqlite_batches_across_statements_whole(tmp_path: Path) -> None:
    """Batches of every size around the multi-row statement's land whole, each row once."""
    sink = SQLiteSink(str(tmp_path / "u.db"))
    await sink.open()
    written: list[Row] = []
    for size in (1, 2, 37, 100, 127, 128, 129, 255, 1000):
        batch = []
        for i in range(size):
            call = Call(new_id(), f"{size}-{i}", 0.0, 1_700_000_000.0 + i, "chat", status=200)
            call.prompt_tokens = size * 10_000 + i
            batch.append(row(call, "edge-a", 0.0))
        await sink.write(batch)
        written += batch
    await sink.write(written[:500])  # a batch retried: nothing twice
    await sink.close()
    found = sqlite_records(tmp_path / "u.db")
    assert len(found) == len(written)
    assert all(found[r[0]]["prompt_tokens"] == r[14] for r in written)
    assert all(found[r[0]]["request_id"] == r[1] for r in written)


async def test_sqlite_shared_values_stored_per_row(tmp_path: Path) -> None:
    """Rows agreeing on some text columns, not others, store their own values; shared bound once."""
    sink = SQLiteSink(str(tmp_path / "u.db"))
    await sink.open()
    batch: list[Row] = []
    for i in range(70):  # a 64-row statement and a 4-row and a 2-row one
        call = Call(new_id(), f"r{i}", 0.0, 1_700_000_000.0 + i, "chat", status=200)
        call.error = "status_502" if i == 5 else ""  # one row differs: not shared there
        call.cache = "miss" if i >= 64 else ""
        call.guard = {"email": i} if i == 69 else None
        batch.append(row(call, "edge-a" if i < 66 else "edge-b", 0.0))
    batch += both_forms()[1]  # replayed rows: None and bools among sentinels
    await sink.write(batch)
    await sink.close()
    found = sqlite_records(tmp_path / "u.db")
    assert len(found) == len(batch)
    for values in batch:
        stored_row = found[values[0]]
        expected = as_dict(values)
        expected["stream"], expected["estimated"] = (
            int(expected["stream"]),
            int(expected["estimated"]),
        )
        assert stored_row == expected


def test_sqlite_statement_binds_an_agreeing_group_once() -> None:
    """A group of columns every row agrees on is bound once; one row apart unshares it."""
    calls = [
        Call(new_id(), f"r{i}", 0.0, 1_700_000_000.0 + i, "chat", status=200) for i in range(8)
    ]
    for call in calls:
        call.key_id, call.team, call.model, call.served = "k1", "t1", "m", "m-served"
        call.backend, call.route = "b1", "sticky"
    shapes: Shapes = {}
    _, agreeing = sqlite_statement([row(call, "edge-a", 0.0) for call in calls], shapes)
    calls[3].route = "least"  # backend and route: bound per row again
    _, apart = sqlite_statement([row(call, "edge-a", 0.0) for call in calls], shapes)
    assert len(apart) - len(agreeing) == (len(calls) - 1) * len(SHAREABLE_TOGETHER[1])


def test_sqlite_statement_binds_nothing_for_absent_values_and_our_ids() -> None:
    """Values absent in every row are NULL in the statement; ids equal to row ids aren't rebound."""
    ours = [Call(i, i, 0.0, 1_700_000_000.0, "chat", status=200) for i in ("a", "b", "c")]
    shapes: Shapes = {}
    sql, params = sqlite_statement([row(call, "edge-a", 0.0) for call in ours], shapes)
    absent = ("guard", "prompt", "completion", "ttft_ms")
    assert sql.count("NULL") == len(absent) * len(ours) and params.count("a") == 1
    ours[1].request_id, ours[2].ttft = "client-id", 0.5
    sql, params = sqlite_statement([row(call, "edge-a", 0.0) for call in ours], shapes)
    assert sql.count("NULL") == (len(absent) - 1) * len(ours)
    assert params.count("a") == 2 and "client-id" in params
    assert 500.0 in params and params.count(NO_TTFT) == 2


def pair(differing: int) -> list[Row]:
    """Two rows that differ in the shareable text columns set in the bits of `differing`."""
    rows = []
    for i in range(2):
        call = Call(new_id(), f"r{i}", 0.0, 1_700_000_000.0, "chat", status=200)
        call.error = f"e{i}" if differing & 1 else ""
        call.cache = f"c{i}" if differing & 2 else ""
        call.limit = f"l{i}" if differing & 4 else ""
        rows.append(row(call, f"edge-{i}" if differing & 8 else "edge-a", 0.0))
    return rows


def test_sqlite_statement_shapes_per_size_bounded() -> None:
    """Past a few statement shapes per row count, chunks bind every value (bounded statements)."""
    shapes: Shapes = {}
    counts = [len(sqlite_statement(pair(differing), shapes)[1]) for differing in range(16)]
    assert len(set(counts[:6])) > 1  # shared values bound once while the shapes are new
    assert counts[6:] == [2 * len(NAMES)] * 10  # then every value bound, fully
    assert len(shapes[2]) == 6


async def test_sqlite_rows_past_the_shapes_bound_stored_per_row(tmp_path: Path) -> None:
    """Chunks past the bound of shapes store each row's own values, like the others."""
    sink = SQLiteSink(str(tmp_path / "u.db"))
    await sink.open()
    batch: list[Row] = []
    for differing in range(16):
        rows = pair(differing)
        await sink.write(rows)
        batch += rows
    await sink.close()
    assert_stored(tmp_path / "u.db", batch)


async def test_sqlite_groups_shared_or_not_stored_per_row(tmp_path: Path) -> None:
    """Rows whose columns agree in some statements and not others store each row's own values."""
    # Columns: who/where, outcome, cache counts, cost, request id, time to first token.
    sink = SQLiteSink(str(tmp_path / "u.db"))
    await sink.open()
    batch: list[Row] = []
    for i in range(100):  # statements of 64, 32 and 4 rows
        own = new_id()
        call = Call(own, own, 0.0, 1_700_000_000.0 + i, "chat", status=200)
        call.key_id, call.team, call.model, call.served = "k1", "t1", "m", "m"
        call.backend, call.route = "b1", "sticky"
        call.prompt_tokens, call.completion_tokens = 24, 20
        if i == 70:
            call.model = "other"  # the 32-row statement: who/what not shared
            call.request_id = "client-id"  # nor the request ids
            call.status, call.estimated = 502, True  # nor the outcome
        if i >= 96:
            call.backend = f"b{i}"  # the 4-row statement: where not shared
            call.ttft, call.stream = 0.001 * i, True
            call.cached_tokens, call.saved_tokens = i - 96, 2 * i  # nor the cache counts
        batch.append(row(call, "edge-a", 0.0 if i < 96 else 0.001 * i))  # nor the costs
    batch += both_forms()[1]  # replayed rows: None and bools among sentinels
    await sink.write(batch)
    await sink.write(both_forms()[1])  # replayed rows alone: None agreed by every row
    await sink.close()
    assert_stored(tmp_path / "u.db", batch)


class _HeldSink:
    """A sink whose writes wait until released; it keeps the batches it was given."""

    name = "held"

    def __init__(self) -> None:
        self.batches: list[list[Row]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def open(self) -> None:
        """Nothing to open."""

    async def write(self, rows: list[Row]) -> None:
        self.batches.append(rows)
        self.started.set()
        await self.release.wait()

    def abandon(self) -> None:
        """Nothing to drop."""

    async def close(self) -> None:
        """Nothing to close."""


async def test_flush_writes_only_what_was_pending() -> None:
    """Rows recorded during a write wait for the next flush, and count as pending meanwhile."""
    sink = _HeldSink()
    recorder = UsageRecorder(sink, UsageConfig(max_pending=5, batch_size=3), "edge-a", None)
    for _ in range(2):
        recorder.record(bare())
    flushing = asyncio.create_task(recorder.flush())
    await sink.started.wait()
    for _ in range(3):
        recorder.record(bare())
    recorder.record(bare())  # 2 taken + 3 waiting: the bound of 5 is reached
    assert recorder.pending == 5 and recorder.counts["dropped"] == 1
    sink.release.set()
    await flushing
    assert [len(b) for b in sink.batches] == [2] and recorder.pending == 3
    await recorder.flush()
    assert [len(b) for b in sink.batches] == [2, 3] and recorder.counts["written"] == 5
