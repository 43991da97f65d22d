"""Usage records in PostgreSQL: several edges write to one database.

The schema is Corral's: created and migrated at start (under an advisory lock, so edges
starting together migrate once), versioned in `corral_schema`. A batch is one transaction:
a binary COPY (asyncpg's copy_records_to_table) into a session's temporary staging table
(its rows emptied at commit), then `INSERT ... SELECT FROM` it `ON CONFLICT (id) DO NOTHING`,
so a retried batch (after a timeout whose write did land, or a crash) adds nothing twice.
COPY takes the rows as they are (row tuples, encoded in C); the earlier one-statement
`INSERT ... FROM unnest(arrays)` spent ~16 µs of the writer's CPU per row building and
encoding 27 arrays, against ~2 µs for the COPY (the server's work is about the same).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from edge.gateway.records import COLUMNS, FLAGS, INDEXES, NAMES, NULLABLE, TABLE, Row
from edge.gateway.sinks import SinkError

if TYPE_CHECKING:
    import asyncpg

SCHEMA_VERSION: Final = 2
_LOCK: Final = 0x636F7272616C  # pg_advisory_xact_lock key: "corral"

# Each migration brings the schema from version N-1 to N.
_MIGRATIONS: Final = (
    "\n".join(
        [
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            + ", ".join(f"{name} {kind}" for name, _, kind in COLUMNS)
            + ");",
            *(f"CREATE INDEX IF NOT EXISTS {i} ON {TABLE} ({cols});" for i, cols in INDEXES),
        ]
    ),
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS saved_tokens integer NOT NULL DEFAULT 0;",
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

# The staging table's columns hold a row as records.row makes it (ts in Unix seconds, flags
# 0/1, absent values as sentinels); the INSERT from it makes them the table's.
_STAGE: Final = "corral_usage_in"
_STAGE_TYPES: Final = {
    "text PRIMARY KEY": "text",
    "text NOT NULL": "text",
    "text": "text",
    "timestamptz NOT NULL": "float8",
    "integer NOT NULL": "int4",
    "integer NOT NULL DEFAULT 0": "int4",
    "boolean NOT NULL": "int4",
    "double precision NOT NULL": "float8",
    "double precision": "float8",
}
_CREATE_STAGE: Final = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ("
    + ", ".join(f"{name} {_STAGE_TYPES[kind]}" for name, _, kind in COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)


def _value(name: str) -> str:
    """A column's value from the staging table: the row's form (records.row) made the table's."""
    if name == "ts":
        return "to_timestamp(ts)"
    if name in FLAGS:
        return f"{name}::boolean"
    absent = NULLABLE.get(name)
    return name if absent is None else f"nullif({name}, {absent!r})"


_MOVE: Final = (
    f"INSERT INTO {TABLE} ({', '.join(NAMES)}) SELECT "
    + ", ".join(_value(name) for name in NAMES)
    + f" FROM {_STAGE} ON CONFLICT (id) DO NOTHING"
)


async def _stage(conn: asyncpg.Connection) -> None:
    """Every pooled connection's staging table (temporary: one per session)."""
    await conn.execute(_CREATE_STAGE)


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS corral_schema (version integer NOT NULL)")
        found: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM corral_schema")
        if found > SCHEMA_VERSION:
            raise SinkError(
                f"the usage database has schema {found}, newer than this Corral's {SCHEMA_VERSION}"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(_MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO corral_schema (version) VALUES ($1)", version)
        return found


def _storable(row: Row) -> Row:
    """The row as PostgreSQL text can hold it: a NUL (a prompt may carry \\u0000, and body
    logging keeps prompts) becomes U+FFFD, where it would fail the whole batch, and every
    replay of it, for good."""
    if not any(isinstance(v, str) and "\x00" in v for v in row):
        return row
    return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)


class PostgresSink:
    """A small asyncpg pool; one transaction (COPY, then INSERT) per batch."""

    name = "postgres"

    def __init__(self, dsn: str, *, timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None

    async def _connect(self) -> asyncpg.Pool:
        try:
            import asyncpg
        except ImportError:  # pragma: no cover - an install without the postgres extra
            raise SinkError(
                "the postgres sink needs asyncpg: pip install 'corral[postgres]'"
            ) from None
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=2,
                timeout=self._timeout,
                command_timeout=30,
                init=_stage,
            )
            async with pool.acquire() as conn:
                await migrate(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise SinkError(f"cannot open the usage database: {_safe(exc)}") from None
        return pool

    async def open(self) -> None:
        self._pool = await self._connect()

    async def write(self, rows: list[Row]) -> None:
        import asyncpg

        pool = self._pool
        if pool is None:  # the database was down at start: connect now
            pool = self._pool = await self._connect()
        try:
            async with pool.acquire() as conn, conn.transaction():
                records = [_storable(row) for row in rows]
                await conn.copy_records_to_table(_STAGE, records=records, columns=NAMES)
                await conn.execute(_MOVE)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise SinkError(f"writing usage records: {_safe(exc)}") from None

    def abandon(self) -> None:
        """Close every connection at once (no goodbye to a server that does not answer); the
        next write connects afresh."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(5.0):
                    await pool.close()
            except TimeoutError:
                pool.terminate()


def _safe(exc: BaseException) -> str:
    """An error's text without the DSN (it may hold a password)."""
    return f"{type(exc).__name__}: {exc}".split("postgresql://")[0].strip()
