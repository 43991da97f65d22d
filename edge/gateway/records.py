"""The usage record's columns, one row per Call, shared by every sink and by the reports."""

from __future__ import annotations

from typing import Any, Final

import orjson

from edge.gateway.call import Call

# (name, SQLite type, PostgreSQL type), in row order.
COLUMNS: Final = (
    ("id", "TEXT PRIMARY KEY", "text PRIMARY KEY"),
    ("request_id", "TEXT NOT NULL", "text NOT NULL"),
    ("ts", "REAL NOT NULL", "timestamptz NOT NULL"),  # arrival; Unix seconds in rows
    ("edge", "TEXT NOT NULL", "text NOT NULL"),
    ("key_id", "TEXT NOT NULL", "text NOT NULL"),
    ("team", "TEXT NOT NULL", "text NOT NULL"),
    ("endpoint", "TEXT NOT NULL", "text NOT NULL"),
    ("model", "TEXT NOT NULL", "text NOT NULL"),
    ("served_model", "TEXT NOT NULL", "text NOT NULL"),
    ("backend", "TEXT NOT NULL", "text NOT NULL"),
    ("route", "TEXT NOT NULL", "text NOT NULL"),
    ("status", "INTEGER NOT NULL", "integer NOT NULL"),
    ("error", "TEXT NOT NULL", "text NOT NULL"),
    ("stream", "INTEGER NOT NULL", "boolean NOT NULL"),
    ("prompt_tokens", "INTEGER NOT NULL", "integer NOT NULL"),
    ("cached_tokens", "INTEGER NOT NULL", "integer NOT NULL"),
    ("completion_tokens", "INTEGER NOT NULL", "integer NOT NULL"),
    ("estimated", "INTEGER NOT NULL", "boolean NOT NULL"),
    ("cost_usd", "REAL NOT NULL", "double precision NOT NULL"),
    ("ttft_ms", "REAL", "double precision"),
    ("duration_ms", "REAL NOT NULL", "double precision NOT NULL"),
    ("cache", "TEXT NOT NULL", "text NOT NULL"),
    ("guard", "TEXT", "text"),  # JSON: finding kind -> count
    ("limit_outcome", "TEXT NOT NULL", "text NOT NULL"),
    ("prompt", "TEXT", "text"),  # only with body logging on for the team
    ("completion", "TEXT", "text"),
    # A cache hit's tokens: what the stored answer cost upstream (schema 2).
    ("saved_tokens", "INTEGER NOT NULL DEFAULT 0", "integer NOT NULL DEFAULT 0"),
)
NAMES: Final = tuple(c[0] for c in COLUMNS)
# Indexes the reports use (time ranges, per team / key / model / backend).
INDEXES: Final = (
    ("usage_ts", "ts"),
    ("usage_team_ts", "team, ts"),
    ("usage_key_ts", "key_id, ts"),
    ("usage_model_ts", "model, ts"),
    ("usage_backend_ts", "backend, ts"),
)
TABLE: Final = "corral_usage"

Row = tuple[Any, ...]


def _text(data: bytes | None) -> str:
    return NO_TEXT if data is None else data.decode("utf-8", "replace")


# A row holds SQL parameters, bound as cheaply as the sqlite3 module can: it binds int,
# float and str at once, but None and bool only after a failed adapter lookup each (an
# AttributeError raised and cleared; CPython 3.11), which was a third of an insert. So flags
# are 0/1 and absent values are these sentinels, turned back into NULL by the sinks'
# statements (`nullif`); `as_dict` gives the JSON form (true/false, null). Rows from that
# form (`from_dict`: replayed spools) hold None and bools, which every sink takes as well.
NO_TTFT: Final = -1.0  # ttft_ms of an answer that never started (never a real time)
NO_TEXT: Final = ""  # guard, prompt, completion: not kept (an empty body is kept as NULL too)
FLAGS: Final = ("stream", "estimated")
NULLABLE: Final = {"ttft_ms": NO_TTFT, "guard": NO_TEXT, "prompt": NO_TEXT, "completion": NO_TEXT}


def row(call: Call, edge: str, cost: float) -> Row:
    """The Call as a row of COLUMNS (SQL parameters: flags 0/1, absent values sentinels)."""
    # One tuple display of plain attribute loads: the interpreter specialises each to a
    # slot read, less than half the cost of operator.attrgetter's generic lookups (335 vs
    # 780 ns a row, timeit), which are what the recorder spends most on the event loop.
    ttft = call.ttft
    guard = call.guard
    prompt = call.prompt
    return (
        call.id,
        call.request_id,
        call.time,
        edge,
        call.key_id,
        call.team,
        call.endpoint,
        call.model,
        call.served,
        call.backend,
        call.route,
        call.status,
        call.error,
        1 if call.stream else 0,
        call.prompt_tokens,
        call.cached_tokens,
        call.completion_tokens,
        1 if call.estimated else 0,
        cost,
        NO_TTFT if ttft is None else ttft * 1000.0,  # round() would cost more than the rest
        call.duration * 1000.0,
        call.cache,
        NO_TEXT if guard is None else orjson.dumps(guard).decode(),
        call.limit,
        NO_TEXT if prompt is None else _text(prompt),
        NO_TEXT if prompt is None else _text(call.completion),
        call.saved_tokens,
    )


def as_dict(values: Row) -> dict[str, Any]:
    """A row in its JSON form: flags true/false, absent values null."""
    data = dict(zip(NAMES, values, strict=True))
    for name in FLAGS:
        data[name] = bool(data[name])
    for name, absent in NULLABLE.items():
        if data[name] == absent:
            data[name] = None
    return data


def from_dict(data: dict[str, Any]) -> Row:
    return tuple(data.get(name) for name in NAMES)
