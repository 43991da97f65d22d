"""Usage reports (`corral usage`): requests, tokens, cost, error rate and latency percentiles
per key, team, model, backend or day, read from a sink (SQLite, JSON lines, PostgreSQL)."""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from edge.gateway.records import TABLE
from edge.gateway.sinks import SinkError, sqlite_connect

GROUPS: Final = ("key", "team", "model", "backend", "day")
_COLUMN: Final = {"key": "key_id", "team": "team", "model": "model", "backend": "backend"}
_SPAN: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_span(text: str) -> float:
    """Seconds in '90s', '30m', '24h', '7d', '2w'; a ValueError otherwise."""
    found = _SPAN.match(text.strip())
    if found is None:
        raise ValueError(f"expected a span like 30m, 24h or 7d, got {text!r}")
    return float(found[1]) * _UNIT[found[2]]


@dataclass
class Group:
    """One line of a report."""

    name: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: int = 0  # records whose tokens were estimated
    cost_usd: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    durations: list[float] = field(default_factory=list, repr=False)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def add(self, failed: bool, prompt: int, cached: int, completion: int, estimated: bool,
            cost: float, duration: float) -> None:  # fmt: skip
        """One record; `failed`: answered with an error status, or cut short after a 200."""
        self.requests += 1
        self.errors += bool(failed)
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += completion
        self.estimated += bool(estimated)
        self.cost_usd += cost
        self.durations.append(duration)

    def close(self) -> None:
        values = sorted(self.durations)
        self.p50_ms, self.p95_ms = _rank(values, 0.5), _rank(values, 0.95)
        self.durations = []

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["durations"]
        out["error_rate"] = round(self.error_rate, 4)
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


def _rank(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    return values[max(0, math.ceil(q * len(values)) - 1)]


@dataclass
class Report:
    by: str
    since_unix: float
    groups: list[Group]
    total: Group

    def as_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since_unix": self.since_unix,
            "groups": [g.as_json() for g in self.groups],
            "total": self.total.as_json(),
        }


_Record = tuple[str, bool, int, int, int, bool, float, float]


def _build(by: str, since: float, records: Iterable[_Record]) -> Report:
    groups: dict[str, Group] = {}
    total = Group("total")
    for name, *values in records:
        group = groups.get(name)
        if group is None:
            group = groups[name] = Group(name)
        group.add(*values)  # type: ignore[arg-type]
        total.add(*values)  # type: ignore[arg-type]
    for group in groups.values():
        group.close()
    total.close()
    ordered = sorted(groups.values(), key=lambda g: g.name if by == "day" else -g.requests)
    return Report(by, since, ordered, total)


# An error: its status, or the error a 200 ended with (a stream cut mid-way, timed out).
_FAILED: Final = "(status >= 400 OR error <> '')"
_FIELDS: Final = (
    f"{_FAILED}, prompt_tokens, cached_tokens, completion_tokens, estimated, cost_usd, duration_ms"
)


def from_sqlite(path: str, by: str, since: float) -> Report:
    key = "date(ts, 'unixepoch')" if by == "day" else _COLUMN[by]
    try:
        db = sqlite_connect(path, create=False)
    except sqlite3.Error as exc:
        raise SinkError(f"cannot read {path}: {exc}") from None
    try:
        cursor = db.execute(f"SELECT {key}, {_FIELDS} FROM {TABLE} WHERE ts >= ?", (since,))
        return _build(by, since, cursor)
    except sqlite3.Error as exc:
        raise SinkError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()


def from_jsonl(path: str, by: str, since: float) -> Report:
    import datetime as dt

    seen: set[str] = set()

    def records() -> Iterable[_Record]:
        with Path(path).open("rb") as lines:
            for line in lines:
                try:
                    r = orjson.loads(line)
                    if r["ts"] < since or r["id"] in seen:
                        continue  # a replayed batch can repeat records in a file
                    if by == "day":
                        name = dt.datetime.fromtimestamp(r["ts"], dt.UTC).date().isoformat()
                    else:
                        name = r[_COLUMN[by]]
                    record: _Record = (
                        name, r["status"] >= 400 or bool(r.get("error")),
                        int(r["prompt_tokens"]), int(r["cached_tokens"]),
                        int(r["completion_tokens"]), bool(r["estimated"]),
                        float(r["cost_usd"]), float(r["duration_ms"]),
                    )  # fmt: skip
                except orjson.JSONDecodeError:
                    continue  # a line cut by a crash
                except (KeyError, TypeError, ValueError, OverflowError, OSError):
                    continue  # not a usage record (another program's line in the file)
                seen.add(r["id"])
                yield record

    try:
        return _build(by, since, records())
    except OSError as exc:
        raise SinkError(f"cannot read {path}: {exc}") from None


async def from_postgres(dsn: str, by: str, since: float) -> Report:
    try:
        import asyncpg
    except ImportError:  # an optional dependency (the postgres extra)
        needs = "reading PostgreSQL needs asyncpg: pip install 'corral[postgres]'"
        raise SinkError(needs) from None

    key = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')" if by == "day" else _COLUMN[by]
    query = f"""
        SELECT {key} AS name, count(*) AS requests, count(*) FILTER (WHERE {_FAILED}),
               sum(prompt_tokens), sum(cached_tokens), sum(completion_tokens),
               count(*) FILTER (WHERE estimated), sum(cost_usd),
               percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms),
               percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms)
        FROM {TABLE} WHERE ts >= to_timestamp($1) GROUP BY ROLLUP (1)"""
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    # ValueError and InterfaceError: a malformed DSN (its text, a password in it, not shown).
    except (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        TimeoutError,
        ValueError,
    ) as exc:
        raise SinkError(f"cannot reach the usage database: {type(exc).__name__}") from None
    try:
        rows = await conn.fetch(query, since)
    except asyncpg.UndefinedTableError:
        rows = []
    finally:
        await conn.close()
    groups: list[Group] = []
    total = Group("total")
    for r in rows:
        group = Group(
            "total" if r[0] is None else str(r[0]), int(r[1]), int(r[2]), int(r[3] or 0),
            int(r[4] or 0), int(r[5] or 0), int(r[6]), float(r[7] or 0.0), r[8], r[9],
        )  # fmt: skip
        if r[0] is None:
            total = group
        else:
            groups.append(group)
    groups.sort(key=lambda g: g.name if by == "day" else -g.requests)
    return Report(by, since, groups, total)


def render(report: Report) -> str:
    """A table for people."""
    header = (report.by.upper(), "REQUESTS", "ERRORS", "PROMPT", "CACHED", "COMPLETION",
              "COST USD", "P50 MS", "P95 MS")  # fmt: skip

    def line(g: Group) -> tuple[str, ...]:
        est = "~" if g.estimated else ""
        return (
            g.name or "-", str(g.requests), f"{g.error_rate:.1%}", f"{est}{g.prompt_tokens}",
            str(g.cached_tokens), f"{est}{g.completion_tokens}", f"{g.cost_usd:.4f}",
            "-" if g.p50_ms is None else f"{g.p50_ms:.1f}",
            "-" if g.p95_ms is None else f"{g.p95_ms:.1f}",
        )  # fmt: skip

    table = [header, *(line(g) for g in report.groups), line(report.total)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(row, widths, strict=True))) for row in table]  # fmt: skip
    if any(g.estimated for g in report.groups):
        out.append("~ some tokens estimated (the backend reported no usage)")
    return "\n".join(out)
