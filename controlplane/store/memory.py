"""An in-process store with etcd's semantics, for one process (`corral up`, `--store memory`).

One revision counter for every write; leases expire on the event loop's clock; a bounded
history of revisions serves watches from a start revision, and older ones raise
CompactedError, as a compacted etcd would.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from controlplane.store.base import (
    MAX_TXN_WRITES,
    CompactedError,
    EventType,
    KeyValue,
    LeaseNotFoundError,
    Store,
    StoreClosedError,
    StoreError,
    WatchBatch,
    WatchEvent,
    Write,
    WriteOutcome,
)

# Revisions of history kept for watches that start in the past.
DEFAULT_HISTORY = 10_000


@dataclass(eq=False)
class _Lease:
    id: int
    ttl: int
    keys: set[bytes] = field(default_factory=set)
    # When set, the lease expires at this loop time; None while this store keeps it alive.
    deadline: float | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class _Revision:
    revision: int
    events: tuple[WatchEvent, ...]


class MemoryStore(Store):
    """etcd semantics in one process. Not shared between processes, not persistent."""

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        self._cluster_id = secrets.token_hex(8)
        # etcd starts at revision 1 with no keys.
        self._revision = 1
        self._keys: list[bytes] = []  # sorted
        self._data: dict[bytes, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._history: deque[_Revision] = deque(maxlen=history)
        # Watches starting below this revision are refused (as after an etcd compaction).
        self._compact_revision = 1
        self._changed = asyncio.Event()
        self._closed = False
        self._on_lease_lost: Callable[[int], None] | None = None

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def revision(self) -> int:
        """The current store revision."""
        return self._revision

    async def start(self) -> None:
        self._check_open()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        self._changed.set()

    def compact(self, revision: int) -> None:
        """Forget history before revision (tests: the etcd `compact` operation)."""
        revision = min(revision, self._revision)
        self._compact_revision = max(self._compact_revision, revision)
        while self._history and self._history[0].revision < self._compact_revision:
            self._history.popleft()

    # Reads and writes -------------------------------------------------------------------

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        self._check_open()
        start = bisect.bisect_left(self._keys, prefix)
        found: list[KeyValue] = []
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            found.append(self._data[key])
        return self._revision, found

    async def get(self, key: bytes) -> KeyValue | None:
        self._check_open()
        return self._data.get(key)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        self._check_open()
        self._put(key, value, lease)
        return self._revision

    async def put_if(
        self,
        key: bytes,
        value: bytes,
        *,
        lease: int = 0,
        expect_absent_or_lease: int | None = None,
        expect_mod_revision: int | None = None,
    ) -> bool:
        self._check_open()
        current = self._data.get(key)
        if expect_mod_revision is not None:
            mod_revision = current.mod_revision if current is not None else 0
            if mod_revision != expect_mod_revision:
                return False
        if (
            expect_absent_or_lease is not None
            and current is not None
            and current.lease != expect_absent_or_lease
        ):
            return False
        self._put(key, value, lease)
        return True

    async def put_all_if(self, writes: Sequence[Write]) -> WriteOutcome:
        self._check_open()
        if len(writes) > MAX_TXN_WRITES:
            raise StoreError(f"at most {MAX_TXN_WRITES} writes per transaction")
        data = self._data
        if any(
            (data[w.key].mod_revision if w.key in data else 0) != w.expect_mod_revision
            for w in writes
        ):
            return WriteOutcome(False, self._revision, {w.key: data.get(w.key) for w in writes})
        for write in writes:  # as etcd: a missing lease fails the whole transaction
            if write.lease:
                self._live_lease(write.lease)
        self._commit([self._stored(w.key, w.value, w.lease) for w in writes])
        return WriteOutcome(True, self._revision, {})

    async def delete(self, key: bytes) -> int:
        self._check_open()
        if key in self._data:
            self._commit([self._remove(key)])
        return self._revision

    async def delete_prefix(self, prefix: bytes) -> int:
        self._check_open()
        start = bisect.bisect_left(self._keys, prefix)
        doomed: list[bytes] = []
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            doomed.append(key)
        if doomed:
            self._commit([self._remove(key) for key in doomed])
        return self._revision

    # Leases -----------------------------------------------------------------------------

    async def grant_lease(self, ttl_seconds: int, *, keep: bool = True) -> int:
        self._check_open()
        lease_id = secrets.randbits(62) + 1
        while lease_id in self._leases:
            lease_id = secrets.randbits(62) + 1
        self._leases[lease_id] = _Lease(id=lease_id, ttl=max(1, int(ttl_seconds)))
        if not keep:
            self.release_lease(lease_id)
        return lease_id

    async def check_lease(self, lease_id: int) -> int:
        self._check_open()
        lease = self._live_lease(lease_id)
        if lease.deadline is None:
            return lease.ttl
        return max(1, math.ceil(lease.deadline - asyncio.get_running_loop().time()))

    def refresh_lease(self, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is None and not self._closed and self._on_lease_lost is not None:
            asyncio.get_running_loop().call_soon(self._on_lease_lost, lease_id)
        if lease is None or lease.deadline is None or self._closed:
            return  # gone, or kept alive anyway
        if lease.timer is not None:
            lease.timer.cancel()
        loop = asyncio.get_running_loop()
        lease.deadline = loop.time() + lease.ttl
        lease.timer = loop.call_at(lease.deadline, self._expire, lease_id)

    def lease_answer_age(self) -> float:
        return 0.0  # refreshed in place: always confirmed at once

    def set_lease_lost_listener(self, listener: Callable[[int], None] | None) -> None:
        self._on_lease_lost = listener

    def lease_deadline(self, lease_id: int) -> float | None:
        """Loop time at which the lease runs out; None while kept alive (tests)."""
        lease = self._live_lease(lease_id)
        return lease.deadline

    async def keep_lease(self, lease_id: int) -> int:
        self._check_open()
        lease = self._live_lease(lease_id)
        if lease.deadline is None:
            return lease.ttl
        remaining = lease.deadline - asyncio.get_running_loop().time()
        if lease.timer is not None:
            lease.timer.cancel()
        lease.timer = None
        lease.deadline = None
        return max(1, math.ceil(remaining))

    def release_lease(self, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is None or lease.deadline is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        # The last keepalive refreshed the full TTL; from now on it runs out.
        lease.deadline = loop.time() + lease.ttl
        lease.timer = loop.call_at(lease.deadline, self._expire, lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        self._check_open()
        self._end_lease(lease_id)

    def lease_ids(self) -> list[int]:
        """Leases that exist now (kept or running out)."""
        return list(self._leases)

    # Watching ---------------------------------------------------------------------------

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        self._check_open()
        next_revision = start_revision if start_revision > 0 else self._revision + 1
        while True:
            if self._closed:
                raise StoreClosedError("store closed")
            if next_revision < self._compact_revision:
                raise CompactedError(self._compact_revision)
            events: list[WatchEvent] = []
            if next_revision <= self._revision:
                for entry in self._since(next_revision):
                    events.extend(e for e in entry.events if e.kv.key.startswith(prefix))
                next_revision = self._revision + 1
            if events:
                yield WatchBatch(events=events, revision=self._revision)
                continue
            await self._changed.wait()

    async def last_event_revision(self, prefix: bytes, start_revision: int, revision: int) -> int:
        self._check_open()
        if start_revision < self._compact_revision:
            raise CompactedError(self._compact_revision)
        last = 0
        for entry in self._since(start_revision):
            if entry.revision > revision:
                break
            if any(e.kv.key.startswith(prefix) for e in entry.events):
                last = entry.revision
        return last

    # Internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("store closed")

    def _live_lease(self, lease_id: int) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError(f"lease {lease_id:x} not found")
        return lease

    def _put(self, key: bytes, value: bytes, lease_id: int) -> None:
        self._commit([self._stored(key, value, lease_id)])

    def _stored(self, key: bytes, value: bytes, lease_id: int) -> WatchEvent:
        """Hold key at the next revision (the caller commits); its PUT event."""
        lease = self._live_lease(lease_id) if lease_id else None
        current = self._data.get(key)
        revision = self._revision + 1
        if current is not None and current.lease and current.lease != lease_id:
            old = self._leases.get(current.lease)
            if old is not None:
                old.keys.discard(key)
        if current is None:
            bisect.insort(self._keys, key)
        kv = KeyValue(
            key=key,
            value=value,
            mod_revision=revision,
            create_revision=current.create_revision if current is not None else revision,
            lease=lease_id,
        )
        self._data[key] = kv
        if lease is not None:
            lease.keys.add(key)
        return WatchEvent(EventType.PUT, kv)

    def _remove(self, key: bytes) -> WatchEvent:
        """Drop key (it exists) and return its DELETE event at the next revision."""
        kv = self._data.pop(key)
        del self._keys[bisect.bisect_left(self._keys, key)]
        if kv.lease:
            lease = self._leases.get(kv.lease)
            if lease is not None:
                lease.keys.discard(key)
        return WatchEvent(
            EventType.DELETE,
            KeyValue(key=key, value=b"", mod_revision=self._revision + 1, create_revision=0),
        )

    def _commit(self, events: list[WatchEvent]) -> None:
        self._revision += 1
        if len(self._history) == self._history.maxlen:
            self._compact_revision = self._history[0].revision + 1
        self._history.append(_Revision(self._revision, tuple(events)))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _since(self, revision: int) -> list[_Revision]:
        if not self._history:
            return []
        first = self._history[0].revision
        # Revisions are consecutive: every commit appends exactly one entry. Indexing a
        # deque near its end is cheap, and watchers mostly read the last few entries.
        return [self._history[i] for i in range(max(0, revision - first), len(self._history))]

    def _expire(self, lease_id: int) -> None:
        if not self._closed:
            self._end_lease(lease_id)

    def _end_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.timer is not None:
            lease.timer.cancel()
        if lease.keys:
            self._commit([self._remove(key) for key in sorted(lease.keys)])
