"""Snapshot versions: the revision of the last event under the routing prefix.

Snapshot versions come from the store, never from a local counter, so an edge can move
between replicas. The version is the revision of the last event under the routing prefix
(any write or delete there, even a rewrite of identical bytes), so it is a function of the
store's history alone and every replica gives the same state the same version, however it
learnt it:

- a watched event sets the version to its revision;
- a listing at revision R learns the last routing event at or below R: the listed keys'
  largest mod_revision M, unless something under the prefix happened in (M, R] (a delete,
  or a write to a key since deleted). Those events are read with a watch from M + 1 up to
  R; they only tell the version, never change the listed content. Writes outside routing
  (presence) therefore never change the version, on a replica that watched them go by or
  on one that just started;
- when (M, R] was compacted away, the last routing event in what is left decides; when
  nothing under the prefix is left there either, the version falls back to R (the same
  content, named by a later revision; it never goes back in time). Replicas agree again at
  the next routing event.

Version X always means "the store's routing content at revision X", so two replicas that
give a version to a state agree on the content, and a replica can always catch up to a
version an edge already has by listing the store again.

Unless the store's history went back: etcd restored from a backup keeps its cluster id but
goes back to the backup's revision, and writes after the restore reuse revisions an edge
already applied, naming other content. So versions are compared within one history: the
cluster id streams carry is the store's, plus "/" and the history's epoch once it has one
(`history_label`). The epoch is a value in the store (`routing/epoch`, `policy/epoch`), so
every replica reads the same one; a replica that finds its store behind what an edge (or its
own watch) applied writes a new one (`new_epoch`), once for all replicas, and edges take the
store's content under it as another history.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Sequence
from typing import Protocol

from controlplane.errors import translate_store_error
from controlplane.store.base import (
    CompactedError,
    KeyValue,
    Store,
    StoreError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)

# How long a listing may spend reading the routing events between its keys' last write and
# its revision before it settles for naming the content by the listing's revision.
REPLAY_TIMEOUT_SECONDS = 10.0
# How long a stream waits for its view to see the epoch it wrote (its watch brings it).
EPOCH_WAIT_SECONDS = 10.0
# Epochs are short tokens; anything else found under an epoch key (written by hand) is named
# by its digest, so the cluster ids edges send back stay short and printable.
_MAX_EPOCH = 32


def history_label(cluster_id: str, epoch: str) -> str:
    """The cluster id a stream carries: the store's, plus its history's epoch once it has
    one (none until the store's history first went back: the store's id alone)."""
    return f"{cluster_id}/{epoch}" if epoch else cluster_id


def epoch_of(value: bytes | None) -> str:
    """The history epoch an epoch key's value names ("" when absent)."""
    if not value:
        return ""
    if len(value) <= _MAX_EPOCH and value.isascii() and value.isalnum():
        return value.decode()
    return hashlib.sha256(value).hexdigest()[:16]


async def new_epoch(store: Store, key: bytes, held: str) -> int:
    """Name the store's history anew after it went back past `held`'s content: write a new
    epoch under `key`, unless the store holds another than `held` already (another replica
    wrote one first, or the restored store holds another). Returns the revision at which the
    store holds the epoch it has now (0: none), for the caller's view to wait for."""
    for attempt in range(4):
        kv = await store.get(key)
        if epoch_of(kv.value if kv is not None else None) != held:
            return kv.mod_revision if kv is not None else 0
        if attempt == 3:
            break
        expected = kv.mod_revision if kv is not None else 0
        if await store.put_if(key, secrets.token_hex(4).encode(), expect_mod_revision=expected):
            log.warning(
                "the store's history went back (etcd restored from a backup?): naming its "
                "content by a new epoch under %r, so edges take it",
                key,
            )
    raise StoreError(f"the epoch under {key!r} kept changing")


async def last_event_revision(
    store: Store, prefix: bytes, revision: int, kvs: Sequence[KeyValue]
) -> int:
    """The revision of the last event under `prefix` at or below `revision`, for a listing
    at `revision` that found `kvs` (see the module docstring)."""
    floor = max((kv.mod_revision for kv in kvs), default=0)
    if floor >= revision:
        return revision
    try:
        found = await _replay(store, prefix, floor + 1, revision)
        return max(found, floor, 1)  # 1: nothing under the prefix, ever
    except CompactedError as exc:
        oldest = exc.compact_revision
    if oldest <= revision:
        try:
            found = await _replay(store, prefix, oldest, revision)
        except CompactedError:
            found = 0
        if found > floor:
            return found
    log.info(
        "routing history before revision %d is compacted; naming the listed content by "
        "the listing's revision %d",
        oldest,
        revision,
    )
    return revision


async def _replay(store: Store, prefix: bytes, start: int, revision: int) -> int:
    """The last event under `prefix` in [start, revision], or 0."""
    try:
        async with asyncio.timeout(REPLAY_TIMEOUT_SECONDS):
            return await store.last_event_revision(prefix, start, revision)
    except TimeoutError:
        log.warning(
            "reading routing events up to revision %d took over %gs; naming the listed "
            "content by that revision",
            revision,
            REPLAY_TIMEOUT_SECONDS,
        )
        return revision


class Versioned(Protocol):
    """A view's state as a stream sends it (BuiltSnapshot, BuiltPolicy)."""

    @property
    def cluster_id(self) -> str: ...
    @property
    def version(self) -> int: ...


class CatchingUp(Versioned, Protocol):
    async def catch_up(self, at_least: int) -> None: ...
    async def renew_epoch(self) -> int: ...
    async def wait_revision(self, revision: int) -> None: ...


class Stream:
    """What one edge's stream (snapshots or policy) is owed: never a version older than the
    one it applied before (versions compare only within one cluster; another cluster, or
    none, gets ours), and each newer one once."""

    __slots__ = ("applied", "cluster_id", "floor_cluster", "version")

    def __init__(self, cluster_id: str, applied: int) -> None:
        self.applied = applied
        self.floor_cluster = cluster_id if applied > 0 else ""
        # What this stream was sent last ("" and 0: nothing yet).
        self.cluster_id = ""
        self.version = 0

    def behind(self, state: Versioned) -> bool:
        """The state is older than what the edge applied before (it must not go back)."""
        return state.cluster_id == self.floor_cluster and state.version < self.applied

    def due(self, state: Versioned) -> bool:
        """Send it: not behind, and another cluster or a newer version than the last sent."""
        return not self.behind(state) and (
            state.cluster_id != self.cluster_id or state.version > self.version
        )

    def sent(self, state: Versioned) -> None:
        self.cluster_id, self.version = state.cluster_id, state.version

    async def catch_up(self, view: CatchingUp, what: str) -> None:
        """A view behind the edge lists again to reach its version (the edge came from a
        replica ahead). Still behind after that fresh listing, the store's history went
        back (the store is behind what the edge applied from it): the view names the store's
        content by a new epoch, which the edge takes. A store failure raises the
        ControlPlaneError to end the stream with (UNAVAILABLE: the edge tries another
        replica rather than wait here for a state this one cannot get)."""
        if not self.behind(view):
            return
        try:
            await view.catch_up(self.applied)
            if self.behind(view):
                log.warning(
                    "an edge applied %s version %d of cluster %s, but the store is behind it: "
                    "its history went back",
                    what,
                    self.applied,
                    self.floor_cluster,
                )
                revision = await view.renew_epoch()
                try:
                    async with asyncio.timeout(EPOCH_WAIT_SECONDS):
                        await view.wait_revision(revision)
                except TimeoutError:
                    raise StoreUnavailableError(
                        f"the view did not reach the new epoch (revision {revision})"
                    ) from None
        except StoreError as exc:
            log.info("%s catch-up failed (%s); ending the stream", what, exc)
            raise translate_store_error(exc, f"{what} catch-up") from None
