"""Each replica's copy of the stored traffic records (list, then watch).

Every replica follows the same prefix of the same store, so every replica answers
GetTraffic (and the dashboard) alike, whichever replica the edges report through. Records
are decoded once when they arrive (controlplane/traffic/digest.py), by a task of their own
that yields to the loop between records and every INTAKE_CELLS cells: a watched batch of
records with 1,000 cells each would otherwise hold the loop (and every answer) for tens of
ms. What is held of them, the sums kept over them and the queries are
controlplane/traffic/buckets.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from controlplane.following import follow
from controlplane.keys import KeyLayout
from controlplane.store.base import EventType, KeyValue, Store, WatchBatch
from controlplane.traffic.buckets import Bucket, TrafficBuckets
from controlplane.traffic.digest import Cell, Digest, cell_of
from controlplane.traffic.records import RESOLUTIONS
from corral.v1 import traffic_pb2

log = logging.getLogger(__name__)

_BY_NAME = {res.name: res for res in RESOLUTIONS}
# Cells decoded between two yields to the loop (about a millisecond's work).
INTAKE_CELLS = 250


class TrafficView(TrafficBuckets):
    """The traffic buckets filled from the store: listed, then watched and decoded."""

    def __init__(self, store: Store, layout: KeyLayout) -> None:
        super().__init__()
        self._store = store
        self.layout = layout
        self._prefix = layout.traffic
        self._raw: dict[bytes, tuple[bytes, int]] = {}
        # Watched changes not taken in yet, in order: (key, value; None: deleted).
        self._intake: deque[tuple[bytes, bytes | None]] = deque()
        self._arrived = asyncio.Event()
        self._listings = 0  # bumped by each listing: what was queued before it is dropped

    async def run(self) -> None:
        """List then watch, forever; re-list on compaction, retry while the store is down."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._take_in(), name="traffic intake")
            await follow(self._store, self._prefix, "traffic", self._listed, self._watched, cap=5.0)

    async def _listed(self, revision: int, kvs: Sequence[KeyValue]) -> int:
        self._listings += 1
        self._intake.clear()
        self._clear()
        self._raw.clear()
        for kv in kvs:
            self._put(kv.key, kv.value, kv.mod_revision)
        return revision

    def _watched(self, batch: WatchBatch) -> None:
        """Note the raw values now (the book's first guess); decode them in _take_in."""
        for event in batch.events:
            kv = event.kv
            if event.type is EventType.DELETE:
                self._raw.pop(kv.key, None)
                self._intake.append((kv.key, None))
            elif self._bucket_of(kv.key) is not None:
                self._raw[kv.key] = (kv.value, kv.mod_revision)
                self._intake.append((kv.key, kv.value))
        if self._intake:
            self._arrived.set()

    async def _take_in(self) -> None:
        """Apply watched changes in order, one record per step, yielding within records."""
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._intake:
                listing = self._listings
                key, value = self._intake.popleft()
                if value is None:
                    self._forget(key)
                else:
                    digest = await self._decode_sliced(key, value)
                    bucket = self._bucket_of(key)
                    if digest is not None and bucket is not None and listing == self._listings:
                        steps = self._take_steps(key, bucket, digest)
                        for _ in steps:
                            await asyncio.sleep(0)
                            if listing != self._listings:  # a listing replaced it all
                                steps.close()
                                break
                await asyncio.sleep(0)

    async def _decode_sliced(self, key: bytes, value: bytes) -> Digest | None:
        record = self._parse(key, value)
        if record is None:
            return None
        cells: list[Cell] = []
        stored = record.cells
        for first in range(0, len(stored), INTAKE_CELLS):
            if first:
                await asyncio.sleep(0)
            cells.extend(cell_of(cell) for cell in stored[first : first + INTAKE_CELLS])
        return Digest.of(record, cells)

    def _bucket_of(self, key: bytes) -> Bucket | None:
        """traffic/<resolution>/<edge>/<start ms> -> (resolution, start)."""
        rest = key[len(self._prefix) :]
        name, _, tail = rest.partition(b"/")
        start = tail.rpartition(b"/")[2]
        if name.decode(errors="replace") not in _BY_NAME or not start.isdigit():
            return None
        return name.decode(), int(start)

    def stored(self, key: bytes) -> tuple[bytes, int] | None:
        """The record under key as this replica last saw it (value, mod revision): the
        writer's first guess, so a report needs no read when the watch is current."""
        return self._raw.get(key)

    def _put(self, key: bytes, value: bytes, mod_revision: int = 0) -> None:
        bucket = self._bucket_of(key)
        if bucket is None:
            return
        self._raw[key] = (value, mod_revision)
        record = self._parse(key, value)
        if record is not None:
            self._take(key, bucket, Digest.of(record))

    @staticmethod
    def _parse(key: bytes, value: bytes) -> traffic_pb2.TrafficRecord | None:
        record = traffic_pb2.TrafficRecord()
        try:
            record.ParseFromString(value)
        except DecodeError:
            log.warning("ignoring an undecodable traffic record at %r", key)
            return None
        return record

    def _delete(self, key: bytes) -> None:
        self._raw.pop(key, None)
        self._forget(key)

    def _forget(self, key: bytes) -> None:
        bucket = self._bucket_of(key)
        if bucket is None:
            return
        self._drop(key, bucket)
