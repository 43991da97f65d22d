"""The store interface: a small slice of etcd's data model, so both stores share semantics.

Keys and values are bytes. Every write bumps one cluster-wide revision; watchers see events
in revision order. Keys may be attached to a lease, and vanish when the lease expires or is
revoked. The control plane's domain logic (controlplane/state.py) is written against this
interface only.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

# Writes per put_all_if: etcd refuses transactions of more than 128 operations by default
# (--max-txn-ops), and a failed one reads every key back.
MAX_TXN_WRITES = 64


class StoreError(Exception):
    """Root of every error a store raises; foreign errors are translated at the boundary."""


class StoreUnavailableError(StoreError):
    """No store endpoint answered (all etcd members down or unreachable)."""


class StoreClosedError(StoreError):
    """The store was closed by its owner (not a failure of the store's backend)."""


class CompactedError(StoreError):
    """A watch asked for a revision that was compacted away; re-list and watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


class HistoryRewoundError(StoreError):
    """The store is at a revision below one it already delivered: its history went back
    (etcd restored from a backup). What was learnt past it is gone; list again and take the
    listing whole."""

    def __init__(self, revision: int, seen: int) -> None:
        super().__init__(f"store at revision {revision}, behind revision {seen} seen before")
        self.revision = revision
        self.seen = seen


class LeaseNotFoundError(StoreError):
    """The lease expired or was revoked."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    # Revision of the last write to this key.
    mod_revision: int
    create_revision: int
    # 0 when the key has no lease.
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Write:
    """One put of a put_all_if transaction, on the condition that the key's mod_revision
    is expect_mod_revision (0: the key is absent)."""

    key: bytes
    value: bytes
    expect_mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What put_all_if did: written at revision (every key's new mod_revision), or not
    written and each key's current value (None: absent), read in the same transaction."""

    written: bool
    revision: int
    current: dict[bytes, KeyValue | None]


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    kv: KeyValue  # for DELETE: value is empty, mod_revision is the deletion's revision


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one or more revisions, in order, and the store revision they bring us to."""

    events: Sequence[WatchEvent]
    revision: int


class Store(abc.ABC):
    """What the control plane needs from its state store.

    Lifecycle: `await store.start()` (connects; raises StoreUnavailableError if it cannot),
    `await store.close()`. Usable as `async with store:`.
    """

    @property
    @abc.abstractmethod
    def cluster_id(self) -> str:
        """Identity of the data set: etcd's cluster id, or a random id per MemoryStore."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Reads and writes -------------------------------------------------------------------

    @abc.abstractmethod
    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """All keys under prefix, sorted by key, with the store revision they were read at."""

    @abc.abstractmethod
    async def get(self, key: bytes) -> KeyValue | None: ...

    @abc.abstractmethod
    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write key; return the new revision."""

    @abc.abstractmethod
    async def put_if(
        self,
        key: bytes,
        value: bytes,
        *,
        lease: int = 0,
        expect_absent_or_lease: int | None = None,
        expect_mod_revision: int | None = None,
    ) -> bool:
        """Write key only if a condition holds, atomically (an etcd transaction).

        - expect_mod_revision=N: the key's mod_revision is N (0 means the key is absent).
        - expect_absent_or_lease=L: the key is absent, or is attached to lease L (so an
          agent can claim a backend name, and re-claim it with its own lease, but not take
          another agent's).
        Returns whether the write happened.
        """

    @abc.abstractmethod
    async def put_all_if(self, writes: Sequence[Write]) -> WriteOutcome:
        """Write every key in one transaction (one revision, one watch batch) if every
        key's condition holds; otherwise write nothing and return the keys' current values,
        so a read-modify-write can retry without another read. At most MAX_TXN_WRITES."""

    @abc.abstractmethod
    async def delete(self, key: bytes) -> int:
        """Delete key (no error when absent); return the revision after."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: bytes) -> int: ...

    # Leases -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def grant_lease(self, ttl_seconds: int, *, keep: bool = True) -> int:
        """A new lease. keep=True: the store keeps it alive until release_lease or
        revoke_lease. keep=False: it runs out ttl_seconds after the last refresh_lease
        (or the grant), unless someone keeps or refreshes it."""

    @abc.abstractmethod
    async def keep_lease(self, lease_id: int) -> int:
        """Start keeping an existing lease alive continuously; return its remaining TTL.
        Raises LeaseNotFoundError if it has expired."""

    @abc.abstractmethod
    async def check_lease(self, lease_id: int) -> int:
        """The lease's remaining TTL (at least 1 while it lives), without keeping it.
        Raises LeaseNotFoundError if it has expired or was revoked."""

    @abc.abstractmethod
    def refresh_lease(self, lease_id: int) -> None:
        """Refresh the lease once, soon: it now runs out a full TTL from about now.

        Does not wait. Refreshes asked for together are coalesced (one per lease); the etcd
        store sends them on its one keepalive stream. A lease that is gone stays gone (no
        error). Used for agent sessions: refreshed once per message from the agent, so a
        silent agent's lease runs out a TTL after its last message. A refresh that finds
        the lease gone is reported to the lost-lease listener.
        """

    @abc.abstractmethod
    def lease_answer_age(self) -> float:
        """Seconds since the store last confirmed a lease refresh (0 where a refresh needs
        no round trip; infinite before the first). A lease refreshed and confirmed less
        than its TTL ago is alive now."""

    @abc.abstractmethod
    def set_lease_lost_listener(self, listener: Callable[[int], None] | None) -> None:
        """listener(lease_id) is called (on the event loop, never inside the caller) when a
        refresh finds the lease gone: it expired or was revoked, its keys are deleted."""

    @abc.abstractmethod
    def release_lease(self, lease_id: int) -> None:
        """Stop keeping the lease alive: its keys vanish when the TTL runs out."""

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """End the lease now: its keys vanish at once. No error if already gone."""

    # Watching ---------------------------------------------------------------------------

    @abc.abstractmethod
    def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Events under prefix from start_revision on (inclusive), in order, forever.

        Raises CompactedError when start_revision (or a later resume point) was compacted:
        the caller re-lists with get_prefix and watches from that revision + 1. Reconnects to
        other endpoints internally, resuming from the last seen revision + 1, so callers never
        see a gap or a repeat. Raises HistoryRewoundError when the store turns out to be
        behind start_revision - 1 (or a resume point - 1): its history went back.
        """

    @abc.abstractmethod
    async def last_event_revision(self, prefix: bytes, start_revision: int, revision: int) -> int:
        """The revision of the last event (write or delete) under prefix in
        [start_revision, revision], or 0 if there was none. Raises CompactedError when
        start_revision was compacted away. (The etcd store writes the one key just past the
        prefix to learn that its watch has delivered the range; keep that key free.)"""
