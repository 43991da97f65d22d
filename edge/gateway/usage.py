"""The usage recorder: every finished Call becomes one record, written in batches off the
hot path to the configured sink.

`record()` (on the hot path) turns the Call into its row (cost from the price table), appends
it to a list and, at a full batch, wakes the writer: nothing else. The row is made at once,
not by the writer, so the Call is freed with its request like any short-lived object: kept
for up to a flush interval, Calls outlived the garbage collector's young generations and
every one of them was later traversed by full collections (4 µs a request under load); a row
holds only atomic values, so the collector stops tracking it the first time it sees it. The
writer task writes the rows every flush interval (or full batch). A write that fails or
takes longer than `write_timeout_seconds` never reaches a request: its batch is appended to a
spool file (JSON lines) and replayed, oldest first, once the sink takes writes again; writes
are idempotent (the record id is the key), so a replay adds nothing twice.

Bounds: at most `max_pending` rows wait in memory (beyond: counted as dropped); a crash or
SIGKILL loses at most the records still waiting (one flush interval's worth, or the batch
being written) and those of requests still in flight. A clean stop writes what is pending
within the shutdown grace, and spools what it cannot write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import orjson

from corral.config import EdgeConfig, UsageConfig
from corral.tasks import retrieved
from edge.exposition import Family
from edge.gateway import spool as spool_io
from edge.gateway.call import Call
from edge.gateway.prices import Price, PriceTable
from edge.gateway.records import Row, as_dict, row
from edge.gateway.sinks import JsonLinesSink, Sink, SinkError, SQLiteSink, sqlite_path
from edge.proxy import Recorder

__all__ = ["SINKS", "UsageMetrics", "UsageRecorder", "open_sink", "sink_kind", "sqlite_path"]

log = logging.getLogger(__name__)

SINKS: Final = ("sqlite", "postgres", "jsonl", "off")
_REPLAY_ROWS: Final = 20_000  # spooled rows replayed per pass
_REPLAY_EVERY: Final = 2.0  # seconds between replay passes while the spool is not empty
_WARN_EVERY: Final = 30.0


def sink_kind(usage: UsageConfig) -> str:
    """The sink's name; YAML reads a bare `off` as false, which means off too."""
    kind = usage.sink.lower()
    return "off" if kind in ("false", "no", "none", "") else kind


def open_sink(config: EdgeConfig) -> Sink | None:
    """The configured sink (not yet opened); None when records are kept nowhere."""
    usage = config.usage
    kind = sink_kind(usage)
    if kind not in SINKS:
        raise SinkError(f"edge.usage.sink must be one of {', '.join(SINKS)}, got {usage.sink!r}")
    if kind == "off":
        return None
    if kind == "postgres":
        if usage.postgres_dsn is None:
            raise SinkError("edge.usage.sink is postgres but edge.usage.postgres_dsn is not set")
        from edge.gateway.postgres import PostgresSink

        return PostgresSink(usage.postgres_dsn.reveal(), timeout=usage.write_timeout_seconds)
    path = sqlite_path(config)
    if not path:
        return None
    return SQLiteSink(path) if kind == "sqlite" else JsonLinesSink(path)


def price_table(usage: UsageConfig) -> PriceTable:
    """The shipped prices with the config file's on top."""
    return PriceTable.default(
        (p.model, Price(p.input, p.input if p.cached_input is None else p.cached_input, p.output))
        for p in usage.prices
    )


class UsageRecorder(Recorder):
    """Calls in as rows, batched out to one sink; counted, spooled when the sink fails."""

    __slots__ = (
        "_batch",
        "_closing",
        "_edge",
        "_interval",
        "_last_replay",
        "_last_warning",
        "_max",
        "_pending",
        "_spool",
        "_taken",
        "_timeout",
        "_wake",
        "body_teams",
        "counts",
        "prices",
        "sink",
    )

    def __init__(
        self,
        sink: Sink | None,
        usage: UsageConfig,
        edge_id: str,
        spool: Path | None,
        prices: PriceTable | None = None,
    ) -> None:
        self.sink = sink
        self.prices = prices or price_table(usage)  # replaced whole when prices change
        self.body_teams = frozenset(usage.body_logging_teams)
        self.counts = {"written": 0, "spooled": 0, "replayed": 0, "dropped": 0}
        self._edge = edge_id
        self._spool = spool
        self._batch = max(1, usage.batch_size)
        self._max = max(self._batch, usage.max_pending)
        self._interval = usage.flush_interval_seconds
        self._timeout = usage.write_timeout_seconds
        self._pending: list[Row] = []
        self._taken = 0  # rows the flush under way took and has not written or spooled yet
        self._wake = asyncio.Event()
        self._closing = False
        self._last_replay = 0.0
        self._last_warning = 0.0

    @property
    def pending(self) -> int:
        """Rows in memory: waiting, and taken by the flush under way."""
        return len(self._pending) + self._taken

    def record(self, call: Call) -> None:
        if self.sink is None:
            return  # kept nowhere: nothing to batch (the prices still serve the limits)
        pending = self._pending
        if len(pending) + self._taken >= self._max:
            self.counts["dropped"] += 1
            return
        try:
            call.cost = cost = self.prices.cost(call)
            pending.append(row(call, self._edge, cost))
        except Exception:  # a request is never failed by its record
            self.counts["dropped"] += 1
            log.exception("usage record of request %s dropped", call.id)
            return
        if len(pending) >= self._batch:
            self._wake.set()

    # -- the writer --------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush every interval (or full batch) until stop()."""
        wake = self._wake
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await wake.wait()
            wake.clear()
            try:
                await self.flush()
            except Exception:  # the writer outlives any one bad batch
                log.exception("usage writer failed; continuing")

    def stop(self) -> None:
        """Ask run() to end after the flush under way (nothing is cut mid-write)."""
        self._closing = True
        self._wake.set()

    async def flush(self) -> None:
        """Write what is pending now, in batches; spool what cannot be written; replay the
        spool. Rows recorded meanwhile wait for the next flush (a full batch of them wakes
        it at once): draining them as they came made a stream of small transactions, each
        a thread hand-off and a commit, that cost more than the rows themselves."""
        taken, self._pending = self._pending, []
        self._taken = len(taken)
        done = 0
        ok = True
        try:
            while done < len(taken):
                rows = taken[done : done + self._batch]
                if ok:
                    ok = await self._write(rows)
                    if ok:
                        self.counts["written"] += len(rows)
                if not ok:
                    await self._to_spool(rows)
                done += len(rows)
                self._taken -= len(rows)
        finally:
            if done < len(taken):  # cancelled (a stop's grace ran out): kept for close()
                self._pending[:0] = taken[done:]
            self._taken = 0
        if ok and self._spool is not None and not self._closing:
            now = time.monotonic()
            if now - self._last_replay >= _REPLAY_EVERY:
                self._last_replay = now
                await self._replay()

    async def _write(self, rows: list[Row]) -> bool:
        sink = self.sink
        if sink is None:
            return True
        # The write runs as a task of its own: a sink that hangs (a frozen database whose
        # client would wait in its own cleanup) is left behind, not waited for.
        write = asyncio.ensure_future(sink.write(rows))
        done, _ = await asyncio.wait((write,), timeout=self._timeout)
        try:
            if not done:
                write.cancel()
                write.add_done_callback(retrieved)  # an abandoned write
                sink.abandon()  # the next write starts afresh (a new connection)
                raise TimeoutError(f"no answer within {self._timeout:g}s")
            write.result()
            return True
        except (SinkError, TimeoutError) as exc:
            now = time.monotonic()
            if now - self._last_warning >= _WARN_EVERY:
                self._last_warning = now
                log.warning(
                    "usage records not written to %s (spooled for a retry): %s",
                    sink.name,
                    exc or "timed out",
                )
            return False

    async def _to_spool(self, rows: list[Row]) -> None:
        spool = self._spool
        if spool is None:
            self.counts["dropped"] += len(rows)
            return
        data = b"".join(orjson.dumps(as_dict(r)) + b"\n" for r in rows)
        try:
            await asyncio.to_thread(spool_io.append, spool, data)
            self.counts["spooled"] += len(rows)
        except OSError as exc:
            self.counts["dropped"] += len(rows)
            log.warning("usage records dropped: cannot spool to %s: %s", spool, exc)

    async def _replay(self) -> None:
        spool = self._spool
        assert spool is not None
        try:
            rows, offset = await asyncio.to_thread(spool_io.read, spool, _REPLAY_ROWS)
        except OSError as exc:
            log.warning("cannot read the usage spool %s: %s", spool, exc)
            return
        if not offset:
            return  # no spool, or nothing in it
        for start in range(0, len(rows), self._batch):
            if not await self._write(rows[start : start + self._batch]):
                return  # the cursor stays; what did land is ignored on the next replay
        try:
            # Also with no rows: the cursor passes lines cut by a crash, or the spool goes.
            await asyncio.to_thread(spool_io.acknowledge, spool, offset)
        except OSError as exc:
            log.warning("cannot move the replay cursor of the usage spool %s: %s", spool, exc)
            return
        if rows:
            self.counts["replayed"] += len(rows)
            log.info("replayed %d spooled usage records", len(rows))

    async def close(self, grace: float) -> None:
        """Write what is pending (within `grace`), spool the rest."""
        self.stop()
        try:
            async with asyncio.timeout(grace):
                await self.flush()
        except TimeoutError:
            pass
        if self._pending:
            rows, self._pending = self._pending, []
            await self._to_spool(rows)


class UsageMetrics:
    def __init__(self, recorder: UsageRecorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterable[Family]:
        records = Family(
            "corral_edge_usage_records",
            "Usage records by outcome: written to the sink, spooled to disk after a failed "
            "write, replayed from the spool, dropped (no room in memory or on disk).",
            "counter",
            ["outcome"],
        )
        for outcome, count in self.recorder.counts.items():
            records.add([outcome], count)
        pending = Family("corral_edge_usage_pending", "Usage records waiting in memory.", "gauge")
        pending.add([], self.recorder.pending)
        return [records, pending]
