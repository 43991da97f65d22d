"""Each replica's copy of the stored traffic records (list, then watch), and the queries.

Every replica follows the same prefix of the same store, so every replica answers
GetTraffic (and the dashboard) alike, whichever replica the edges report through.
"""

from __future__ import annotations

import asyncio
import logging
import time

from google.protobuf.message import DecodeError

from controlplane.keys import KeyLayout
from controlplane.store.base import (
    CompactedError,
    EventType,
    Store,
    StoreClosedError,
    StoreError,
)
from controlplane.traffic.query import answer
from controlplane.traffic.records import COARSE, FINE, Resolution
from corral.backoff import Backoff
from corral.v1 import traffic_pb2

log = logging.getLogger(__name__)

WINDOWS: dict[int, tuple[int, Resolution]] = {
    traffic_pb2.TRAFFIC_WINDOW_1M: (60, FINE),
    traffic_pb2.TRAFFIC_WINDOW_5M: (300, FINE),
    traffic_pb2.TRAFFIC_WINDOW_UNSPECIFIED: (300, FINE),
    traffic_pb2.TRAFFIC_WINDOW_1H: (3600, COARSE),
}
# Answers are reused this long (a dashboard polled by many browsers costs one merge).
CACHE_SECONDS = 1.0


class TrafficView:
    def __init__(self, store: Store, layout: KeyLayout) -> None:
        self._store = store
        self._layout = layout
        self.layout = layout
        self._prefixes = {
            res.name: layout.traffic + res.name.encode() + b"/" for res in (FINE, COARSE)
        }
        self.records: dict[bytes, traffic_pb2.TrafficRecord] = {}
        self._revision = 0
        self._cache: dict[tuple[int, int, bool], tuple[float, traffic_pb2.GetTrafficResponse]] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        """List then watch, forever; re-list on compaction, retry while the store is down."""
        backoff = Backoff(base=0.1, cap=5.0)
        prefix = self._layout.traffic
        while True:
            try:
                revision, kvs = await self._store.get_prefix(prefix)
                self.records = {}
                for kv in kvs:
                    self._put(kv.key, kv.value)
                self._revision = revision
                backoff.reset()
                stream = self._store.watch_prefix(prefix, revision + 1)
                try:
                    async for batch in stream:
                        for event in batch.events:
                            if event.type is EventType.DELETE:
                                self.records.pop(event.kv.key, None)
                            else:
                                self._put(event.kv.key, event.kv.value)
                        self._revision = batch.revision
                        self._cache.clear()
                        self.changed.set()
                        self.changed = asyncio.Event()
                finally:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()
            except CompactedError as exc:
                log.info("traffic watch compacted (%s); listing again", exc)
            except StoreClosedError:
                raise
            except StoreError as exc:
                delay = backoff.next()
                log.info("traffic watch failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def _put(self, key: bytes, value: bytes) -> None:
        record = traffic_pb2.TrafficRecord()
        try:
            record.ParseFromString(value)
        except DecodeError:
            log.warning("ignoring an undecodable traffic record at %r", key)
            return
        self.records[key] = record

    def records_of(self, resolution: Resolution) -> list[traffic_pb2.TrafficRecord]:
        prefix = self._prefixes[resolution.name]
        return [r for key, r in self.records.items() if key.startswith(prefix)]

    def query(
        self, request: traffic_pb2.GetTrafficRequest, now_ms: int | None = None
    ) -> traffic_pb2.GetTrafficResponse:
        window, resolution = WINDOWS.get(request.window, WINDOWS[0])
        cache_key = (request.window, request.group_by, request.series)
        mono = time.monotonic()
        if now_ms is None:
            hit = self._cache.get(cache_key)
            if hit is not None and mono - hit[0] < CACHE_SECONDS:
                return hit[1]
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        prefix = self._prefixes[resolution.name]
        start = now - window * 1000
        chosen = [
            record
            for key, record in self.records.items()
            if key.startswith(prefix) and record.end_unix_ms > start
        ]
        response = answer(chosen, request, resolution, start, now)
        if now_ms is None:
            self._cache[cache_key] = (mono, response)
        return response
