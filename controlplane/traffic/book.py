"""Writing edges' traffic reports into the store (RoutingService.ReportTraffic).

Each report is merged into one record per (edge, bucket) at each resolution with a
read-modify-write guarded by the record's mod revision, so two replicas writing the same
record (an edge that moved) never lose a count; the slice's seq makes a resent slice count
once. The write happens before the edge is acknowledged, so an edge keeps what the store
does not hold yet. Records are leased per time bucket, not to the edge or the replica:
history outlives both for the window it serves, then etcd deletes it by itself.

Reports that arrive within BATCH_SECONDS of each other are written together, every record
of all of them in one transaction (one etcd revision, one watch batch on every replica),
and each waits for that write before it is acknowledged. The first guess of a record is
the copy this replica last wrote (kept parsed, with its revision), else the watched copy;
a wrong guess fails the transaction, which reads every key back for the retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from controlplane.errors import ControlPlaneError
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics
from controlplane.store.base import MAX_TXN_WRITES, KeyValue, LeaseNotFoundError, Store, Write
from controlplane.traffic.records import RESOLUTIONS, Resolution, merge_steps
from corral.v1 import traffic_pb2

log = logging.getLogger(__name__)

# A lease is shared by every record written in the same period of this length.
LEASE_PERIOD_SECONDS = 60
CAS_ATTEMPTS = 8
# Reports arriving within this long of the first are written in one transaction.
BATCH_SECONDS = 0.25
# Values per transaction, well under etcd's default request limit of 1.5 MiB.
MAX_TXN_BYTES = 1 << 20
# A record this replica wrote stays parsed for its next merge this long after its last use.
KEEP_SECONDS = 90.0

Guess = tuple[int, traffic_pb2.TrafficRecord | None]  # (mod revision, record; None: absent)


@dataclass
class _Pending:
    """What one batch merges into one record."""

    resolution: Resolution
    edge_id: str
    listen_address: str
    pieces: list[tuple[str, traffic_pb2.TrafficSlice]] = field(default_factory=list)

    async def merge_into(self, record: traffic_pb2.TrafficRecord, now_ms: int) -> bool:
        """Merge every piece, letting the loop run between steps (the record is this
        writer's alone meanwhile); False when the record already held them all."""
        changed = False
        for incarnation, piece in self.pieces:
            steps = merge_steps(record, incarnation, piece)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    changed |= bool(done.value)
                    break
                await asyncio.sleep(0)
        if changed:
            record.listen_address = self.listen_address
            record.updated_unix_ms = now_ms
        return changed


class TrafficBook:
    def __init__(
        self,
        store: Store,
        layout: KeyLayout,
        metrics: Metrics,
        known: Callable[[bytes], tuple[bytes, int] | None] | None = None,
        *,
        batch_seconds: float = BATCH_SECONDS,
    ) -> None:
        self._store = store
        # The watched copy of a record (value, mod revision), tried before reading the store.
        self._known = known
        self._layout = layout
        self._metrics = metrics
        self._batch_seconds = batch_seconds
        # (resolution name, period) -> lease id
        self._leases: dict[tuple[str, int], int] = {}
        self._batch: dict[bytes, _Pending] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        # key -> (mod revision, the record as this replica wrote it, monotonic last use)
        self._mine: dict[bytes, tuple[int, traffic_pb2.TrafficRecord, float]] = {}

    async def report(self, request: traffic_pb2.ReportTrafficRequest) -> None:
        """Store the request's slices (merged into their records); return once written."""
        if not request.slices:
            return
        for piece in request.slices:
            for resolution in RESOLUTIONS:
                start = resolution.bucket(piece.start_unix_ms)
                key = self._layout.traffic_record(resolution.name, request.edge_id, start)
                entry = self._batch.get(key)
                if entry is None:
                    entry = self._batch[key] = _Pending(
                        resolution, request.edge_id, request.listen_address
                    )
                entry.listen_address = request.listen_address
                entry.pieces.append((request.incarnation, piece))
        written = asyncio.get_running_loop().create_future()
        self._waiters.append(written)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_soon())
        await written

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._batch_seconds)
        batch, waiters = self._batch, self._waiters
        self._batch, self._waiters, self._flusher = {}, [], None
        try:
            await self._write(batch)
        except asyncio.CancelledError:
            for waiter in waiters:
                waiter.cancel()
            raise
        except Exception as exc:  # every report of the batch fails alike: the edges resend
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _write(self, batch: dict[bytes, _Pending]) -> None:
        async with self._writing:
            try:
                await self._merge(batch)
            except BaseException:
                # The outcome is unknown: the parsed copies may hold what was not written.
                for key in batch:
                    self._mine.pop(key, None)
                raise
            finally:
                stale = time.monotonic() - KEEP_SECONDS
                for key in [k for k, (_, _, used) in self._mine.items() if used < stale]:
                    del self._mine[key]

    async def _merge(self, batch: dict[bytes, _Pending]) -> None:
        guesses = {key: self._guess(key) for key in batch}
        for _ in range(CAS_ATTEMPTS):
            now_ms = int(time.time() * 1000)
            leases = {res.name: await self._lease(res) for res in RESOLUTIONS}
            records: dict[bytes, traffic_pb2.TrafficRecord] = {}
            writes: list[Write] = []
            for key, (revision, record) in guesses.items():
                entry = batch[key]
                if record is None:
                    record = traffic_pb2.TrafficRecord(edge_id=entry.edge_id)
                if await entry.merge_into(record, now_ms):
                    records[key] = record
                    value = record.SerializeToString()
                    writes.append(Write(key, value, revision, leases[entry.resolution.name]))
                    # A merge of 1,000 cells takes milliseconds: let the loop run between.
                    await asyncio.sleep(0)
            retry: dict[bytes, KeyValue | None] = {}
            for group in _groups(writes):
                try:
                    outcome = await self._store.put_all_if(group)
                except LeaseNotFoundError:
                    self._leases.clear()
                    for write in group:
                        retry[write.key] = await self._store.get(write.key)
                    continue
                self._metrics.store_writes.labels("traffic").inc()
                if outcome.written:
                    used = time.monotonic()
                    for write in group:
                        self._mine[write.key] = (outcome.revision, records[write.key], used)
                else:
                    retry.update(outcome.current)
            if not retry:
                return
            for key in retry:
                self._mine.pop(key, None)
            guesses = {key: _parsed(kv) for key, kv in retry.items()}
        log.warning("traffic records kept changing under us; the reports are retried")
        raise ContendedError("traffic records are being rewritten too fast; report again later")

    def _guess(self, key: bytes) -> Guess:
        """The record as this replica last wrote it, else as last watched, else absent."""
        mine = self._mine.get(key)
        if mine is not None:
            return mine[0], mine[1]
        seen = self._known(key) if self._known is not None else None
        if seen is None:
            return 0, None
        record = traffic_pb2.TrafficRecord()
        record.ParseFromString(seen[0])
        return seen[1], record

    async def _lease(self, resolution: Resolution) -> int:
        period = int(time.time()) // LEASE_PERIOD_SECONDS
        key = (resolution.name, period)
        lease = self._leases.get(key)
        if lease is None:
            for old in [k for k in self._leases if k[0] == resolution.name]:
                del self._leases[old]
            # Outlives the last write of the period by the resolution's TTL.
            ttl = resolution.ttl_seconds + LEASE_PERIOD_SECONDS
            lease = self._leases[key] = await self._store.grant_lease(ttl, keep=False)
        return lease


def _parsed(kv: KeyValue | None) -> Guess:
    if kv is None:
        return 0, None
    record = traffic_pb2.TrafficRecord()
    record.ParseFromString(kv.value)
    return kv.mod_revision, record


def _groups(writes: Sequence[Write]) -> Iterator[list[Write]]:
    """Writes in transactions of at most MAX_TXN_WRITES and about MAX_TXN_BYTES."""
    group: list[Write] = []
    size = 0
    for write in writes:
        if group and (len(group) >= MAX_TXN_WRITES or size + len(write.value) > MAX_TXN_BYTES):
            yield group
            group, size = [], 0
        group.append(write)
        size += len(write.value)
    if group:
        yield group


class ContendedError(ControlPlaneError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "contended"
