"""The usage record's columns, one row per Call, shared by every sink and by the reports."""

from __future__ import annotations

from operator import attrgetter
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


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


# The Call's fields in column order, read in C (a row per record is the writer's main cost).
_HEAD: Final = attrgetter("id", "request_id", "time")
_BODY: Final = attrgetter(
    "key_id", "team", "endpoint", "model", "served", "backend", "route", "status", "error",
    "stream", "prompt_tokens", "cached_tokens", "completion_tokens", "estimated",
)  # fmt: skip


def row(call: Call, edge: str, cost: float) -> Row:
    """The Call as a row of COLUMNS."""
    ttft = call.ttft
    guard, prompt = call.guard, call.prompt
    return (
        *_HEAD(call),
        edge,
        *_BODY(call),
        cost,
        None if ttft is None else ttft * 1000.0,  # round() would cost more than the rest
        call.duration * 1000.0,
        call.cache,
        None if guard is None else orjson.dumps(guard).decode(),
        call.limit,
        None if prompt is None else _text(prompt),
        None if prompt is None else _text(call.completion),
        call.saved_tokens,
    )


def as_dict(values: Row) -> dict[str, Any]:
    return dict(zip(NAMES, values, strict=True))


def from_dict(data: dict[str, Any]) -> Row:
    return tuple(data.get(name) for name in NAMES)
