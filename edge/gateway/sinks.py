"""Where usage records go: a SQLite file, a JSON-lines file (or stdout), PostgreSQL.

A sink takes batches of rows (records.COLUMNS) from the recorder's writer task, never from a
request. SQLite and file writes run in one thread of the sink's own, so the event loop never
waits on a disk. Writes are idempotent (a record's id is its primary key; `INSERT OR IGNORE`),
so a batch retried after a failure or a crash mid-write is never counted twice.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson

from corral.config import EdgeConfig
from edge.errors import EdgeError
from edge.gateway.records import COLUMNS, NAMES, NULLABLE, TABLE, Row, as_dict


class SinkError(EdgeError):
    """A sink could not be opened or written."""


class Sink(Protocol):
    name: str

    async def open(self) -> None: ...

    async def write(self, rows: list[Row]) -> None: ...

    def abandon(self) -> None:
        """A write did not finish in time: drop what it may hang on (connections)."""

    async def close(self) -> None: ...


class _Threaded:
    """One worker thread per sink: its blocking calls in order, off the event loop."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"usage-{name}")

    async def _run(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)  # type: ignore[arg-type]

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=False)

    def abandon(self) -> None:
        """A file write cannot be cut short: later batches wait behind it, time out and are
        spooled too."""


# -- SQLite ---------------------------------------------------------------------------------


def sqlite_path(config: EdgeConfig) -> str:
    """The SQLite (or JSON-lines) file: as configured, else <state_dir>/usage.db, else ""."""
    usage = config.usage
    if usage.path:
        return usage.path
    if config.state_dir:
        return str(Path(config.state_dir) / "usage.db")
    return ""


SQLITE_SCHEMA_VERSION = 3


def sqlite_connect(path: str, *, create: bool) -> sqlite3.Connection:
    """A connection to the usage database (schema created or migrated when `create`)."""
    if create:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif not Path(path).exists():
        raise SinkError(f"no usage database at {path}")
    db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 10000")
    if create:
        db.execute("PRAGMA journal_mode = WAL")  # readers (corral usage) never block writers
        db.execute("PRAGMA synchronous = NORMAL")
        _sqlite_migrate(db)
    return db


def _sqlite_migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")  # one migrator at a time (several workers share a file)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS corral_schema (version INTEGER NOT NULL)")
        found = db.execute("SELECT max(version) FROM corral_schema").fetchone()[0] or 0
        if found > SQLITE_SCHEMA_VERSION:
            raise SinkError(
                f"the usage database has schema {found}, newer than this Corral's "
                f"{SQLITE_SCHEMA_VERSION}"
            )
        if found < 1:
            # Clustered by (ts, id), with no index: reports read a time range, and an insert
            # is one B-tree (schema 3; an id key and a time index were two). A record keeps
            # its id and time when spooled and replayed, so a replay still adds nothing.
            columns = ", ".join(
                f"{name} {'TEXT NOT NULL' if name == 'id' else kind}" for name, kind, _ in COLUMNS
            )
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns}, PRIMARY KEY (ts, id)) "
                "WITHOUT ROWID"
            )
            db.execute("INSERT INTO corral_schema (version) VALUES (1)")
            found = 1
        if found < 2:  # saved_tokens (cache hits); present already in a table created now
            have = {row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")}
            if "saved_tokens" not in have:
                db.execute(
                    f"ALTER TABLE {TABLE} ADD COLUMN saved_tokens INTEGER NOT NULL DEFAULT 0"
                )
            db.execute("INSERT INTO corral_schema (version) VALUES (2)")
        if found < 3:
            # A file from before keeps its layout (clustered by id, a time index): rebuilding
            # a large table would hold the edge's start up. Same columns, same reports.
            db.execute("INSERT INTO corral_schema (version) VALUES (3)")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# Columns that usually hold one value for a whole statement: this edge's name, and what is
# empty or absent in most records (ttft_ms: answers that were not streamed). When every row
# of a statement agrees, the value is bound once for all of them (numbered parameters), or
# written as NULL when it is the absent value: the sqlite3 module binds each text as a copy,
# a malloc and free under SQLite's memory mutex per value, which was most of an insert.
SHAREABLE: Final = tuple(
    NAMES.index(name)
    for name in (
        "edge", "error", "cache", "guard", "limit_outcome", "prompt", "completion", "ttft_ms",
    )
)  # fmt: skip
# Columns that agree across a statement when one team, model and backend carry the traffic
# (a single-user `corral up`, a dedicated fleet), when the answers went well and alike
# (status 200, all streamed or none, counted by the backend), and when no cache is read
# (no cached or saved tokens): each group bound once when all its columns agree. Numbers
# bind without a copy, but each bind is still a call into SQLite under its connection's
# mutex (sharing the last two groups: writer 15.5k -> 14.4k instructions a row). All or
# nothing per group, so they add few statement shapes to the ones above, and _usual_shape
# caps them (each 64-row shape is ~0.3 MiB prepared and ~10 ms to prepare: per-column
# sharing here would multiply them with every mix of traffic). The cost agrees when no model
# served is priced (0: self-hosted models are free unless an operator prices them): the
# writer 13,426 -> 13,156 instructions a row then.
SHAREABLE_TOGETHER: Final = tuple(
    tuple(NAMES.index(name) for name in group)
    for group in (
        ("endpoint", "key_id", "team", "model", "served_model"),
        ("backend", "route"),
        ("status", "stream", "estimated"),
        ("cached_tokens", "saved_tokens"),
        ("cost_usd",),
    )
)
_ID: Final = NAMES.index("id")
_REQUEST_ID: Final = NAMES.index("request_id")
# A column's absent value in rows as recorded (a sentinel) and as replayed (None).
_ABSENT: Final = {NAMES.index(name): (absent, None) for name, absent in NULLABLE.items()}
# Every shareable column, SHAREABLE's then the groups', in the order statements bind them;
# and those of them that can be absent.
_SHAREABLE_ALL: Final = SHAREABLE + tuple(c for group in SHAREABLE_TOGETHER for c in group)
_NULLABLE_SHARED: Final = tuple(c for c in _SHAREABLE_ALL if c in _ABSENT)


def _value(column: int, param: int) -> str:
    """A column's parameter, the sentinel of an absent value made NULL."""
    absent = NULLABLE.get(NAMES[column])
    return f"?{param}" if absent is None else f"nullif(?{param}, {absent!r})"


@functools.lru_cache(maxsize=64)
def _own_columns(shared: tuple[int, ...], null: tuple[int, ...], ours: bool) -> tuple[int, ...]:
    """The columns bound row by row, in order: neither shared, nor NULL, nor (with `ours`)
    the request id that repeats the row's id."""
    unbound = set(shared) | set(null) | ({_REQUEST_ID} if ours else set())
    return tuple(column for column in range(len(NAMES)) if column not in unbound)


@functools.lru_cache(maxsize=64)
def _sqlite_insert(
    rows: int, shared: tuple[int, ...] = (), null: tuple[int, ...] = (), ours: bool = False
) -> str:
    """One INSERT of `rows` rows. Parameters go column by column (a column's values for
    every row, in row order), the `shared` columns' one value each last: the rows arrive
    as columns already (sqlite_statement transposes them to find shared values), so the
    parameters are those columns one after another, with no per-row Python work. The `null`
    columns are NULL in every row (no parameter); with `ours`, every request id is the
    row's id."""
    own = _own_columns(shared, null, ours)
    first = {column: k * rows + 1 for k, column in enumerate(own)}
    shared_param = {column: len(own) * rows + 1 + k for k, column in enumerate(shared)}
    groups = []
    for r in range(rows):
        values = []
        for c in range(len(NAMES)):
            if c in null:
                values.append("NULL")
            elif c in shared_param:
                values.append(_value(c, shared_param[c]))
            else:
                values.append(_value(c, first[_ID if ours and c == _REQUEST_ID else c] + r))
        groups.append("(" + ", ".join(values) + ")")
    return f"INSERT OR IGNORE INTO {TABLE} ({', '.join(NAMES)}) VALUES " + ", ".join(groups)


# Shapes of statement (what is shared, NULL, an alias of the id) per number of rows: each is
# prepared once and kept by its connection (a 64-row one is ~0.3 MiB and ~10 ms to prepare).
# Past the first few seen for a size, a chunk goes in the shape that binds every value,
# whatever traffic mixes come: the prepared statements stay within the connection's cache
# (128) and _sqlite_insert's, rather than being prepared again and again.
_SHAPES_PER_SIZE: Final = 6
Shapes = dict[int, set[tuple[object, ...]]]  # per number of rows: the shapes in use


def _usual_shape(shapes: Shapes, rows: int, shape: tuple[object, ...]) -> bool:
    """Whether a chunk of `rows` rows may go in this shape (seen before, or room for it)."""
    seen = shapes.setdefault(rows, set())
    if shape in seen:
        return True
    if len(seen) < _SHAPES_PER_SIZE:
        seen.add(shape)
        return True
    return False


def _agreed(columns: list[tuple[Any, ...]], size: int) -> tuple[int, ...]:
    """The shareable columns every row agrees on: single columns, and groups whole."""
    same = [c for c in _SHAREABLE_ALL if columns[c].count(columns[c][0]) == size]
    if len(same) == len(_SHAREABLE_ALL):  # the usual chunk: one edge, key, model, outcome
        return _SHAREABLE_ALL
    agreed = tuple(c for c in SHAREABLE if c in same)
    for group in SHAREABLE_TOGETHER:
        if all(c in same for c in group):
            agreed += group
    return agreed


@functools.lru_cache(maxsize=64)
def _shared(agreed: tuple[int, ...], null: tuple[int, ...]) -> tuple[int, ...]:
    """The agreed columns bound once: those not NULL."""
    return tuple(c for c in agreed if c not in null)


def sqlite_statement(chunk: list[Row], shapes: Shapes) -> tuple[str, list[object]]:
    """The INSERT of these rows and its parameters, values every row shares bound once
    (`shapes`: those the connection has prepared, updated)."""
    # Per statement, not per row, Python work is kept to a few C calls: what depends only
    # on the columns agreed is looked up (lru caches), not worked out again column by
    # column (the Python work of a statement 3.39k -> 2.77k instructions a row).
    columns = list(zip(*chunk, strict=True))
    size = len(chunk)
    agreed = _agreed(columns, size)
    null = tuple([c for c in _NULLABLE_SHARED if c in agreed and columns[c][0] in _ABSENT[c]])
    shared = _shared(agreed, null)
    ours = columns[_REQUEST_ID] == columns[_ID]  # no client sent its own X-Request-Id
    if not _usual_shape(shapes, size, (shared, null, ours)):
        shared, null, ours = (), (), False
    # A list grown column by column (each a copy of a tuple's slots): chaining iterators
    # into a tuple cost a call per value, a third of the writer's Python work.
    values: list[object] = []
    for c in _own_columns(shared, null, ours):
        values += columns[c]
    values += [columns[c][0] for c in shared]
    return _sqlite_insert(size, shared, null, ours), values


# Rows go in multi-row statements: the sqlite3 module releases the GIL around every step and
# reset (a thread switch when the event loop is waiting for it), so once a statement, not once
# a row. A statement holds at most _SQLITE_MAX_ROWS rows (about 0.05 ms of binding with the GIL
# held) and SQLite's limit of parameters (999 before 3.32); the rest of a batch goes in
# statements of a power of two rows, so a handful of distinct statements serve every batch
# (the connection keeps them prepared: ~0.6 MiB resident for 1..64 rows, times the few sets of
# shared columns seen; a 128-row one alone would add ~0.55 MiB).
_SQLITE_MAX_ROWS: Final = 64
_SQLITE_CACHE_KIB: Final = 256


def sqlite_chunks(count: int, most: int) -> list[int]:
    """The sizes of the statements that insert `count` rows, `most` rows at most each."""
    sizes = [most] * (count // most)
    rest = count % most
    size = 1 << max(0, rest.bit_length() - 1)
    while rest:
        if size <= rest:
            sizes.append(size)
            rest -= size
        size >>= 1
    return sizes


class SQLiteSink(_Threaded):
    """A SQLite file in WAL mode; each batch one transaction."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__("sqlite")
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._rows_per_statement = 1  # set by _connect() from SQLite's limit
        self._shapes: Shapes = {}  # the statements this connection has prepared

    async def open(self) -> None:
        try:
            self._db = await self._run(self._connect)  # type: ignore[assignment]
        except (sqlite3.Error, OSError) as exc:
            raise SinkError(f"cannot open the usage database {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite_connect(self.path, create=True)
        self._shapes = {}
        # Inserts touch the right edge of the id and time B-trees only (ids are a per-process
        # prefix and a counter): a small page cache serves them; the default ~2 MiB would
        # just sit resident in every edge process.
        db.execute(f"PRAGMA cache_size = -{_SQLITE_CACHE_KIB}")
        most = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(NAMES)
        self._rows_per_statement = max(1, min(_SQLITE_MAX_ROWS, most))
        return db

    def _write(self, rows: list[Row]) -> None:
        db = self._db
        if db is None:
            db = self._db = self._connect()
        start = 0
        db.execute("BEGIN")
        try:
            for size in sqlite_chunks(len(rows), self._rows_per_statement):
                end = start + size
                db.execute(*sqlite_statement(rows[start:end], self._shapes))
                start = end
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def write(self, rows: list[Row]) -> None:
        try:
            await self._run(self._write, rows)
        except (sqlite3.Error, OSError) as exc:
            raise SinkError(f"writing to {self.path}: {exc}") from exc

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self._shutdown()


# -- JSON lines -----------------------------------------------------------------------------


class JsonLinesSink(_Threaded):
    """One JSON object per record and line, appended to a file, or to stdout for "-"."""

    name = "jsonl"

    def __init__(self, path: str) -> None:
        super().__init__("jsonl")
        self.path = path
        self._out: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdout.buffer
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return Path(self.path).open("ab")

    async def open(self) -> None:
        try:
            self._out = await self._run(self._open)  # type: ignore[assignment]
        except OSError as exc:
            raise SinkError(f"cannot open {self.path}: {exc}") from exc

    def _write(self, rows: list[Row]) -> None:
        out = self._out
        if out is None:
            out = self._out = self._open()
        out.write(b"".join(orjson.dumps(as_dict(r)) + b"\n" for r in rows))
        out.flush()

    async def write(self, rows: list[Row]) -> None:
        try:
            await self._run(self._write, rows)
        except OSError as exc:
            raise SinkError(f"writing to {self.path}: {exc}") from exc

    async def close(self) -> None:
        out, self._out = self._out, None
        if out is not None and self.path != "-":
            await self._run(out.close)
        self._shutdown()
