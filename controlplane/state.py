"""Each replica's view of the routing state: list, then watch, then snapshots from it.

The view lists the routing prefix at revision R and watches from R + 1. It never goes back
in time: events at or below the view's revision are ignored, and a listing older than the
view is dropped. On compaction it re-lists. Only when the store's history itself went back
(etcd restored from a backup) does it take an older listing whole, and then names it by a new
history epoch (controlplane/versions.py), so edges take it too.

Snapshot versions come from the store, never from a local counter (controlplane/versions.py
says how a listing is named); subscribers are woken at a paced rate
(controlplane/pacing.py); the records are decoded and read in controlplane/routing_records.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from controlplane.following import follow
from controlplane.keys import DrainFlag, KeyLayout, RoutingKind
from controlplane.pacing import PublishPacer, load_only
from controlplane.routing_records import BuiltSnapshot, RoutingRecords, empty_records
from controlplane.store.base import (
    EventType,
    KeyValue,
    Store,
    StoreClosedError,
    StoreError,
    WatchBatch,
)
from controlplane.versions import epoch_of, history_label, last_event_revision, new_epoch

log = logging.getLogger(__name__)

DrainListener = Callable[[str, DrainFlag | None], None]
RemovalListener = Callable[[str], None]
SyncListener = Callable[[bool], Awaitable[None]]
VersionListener = Callable[[int], None]


class RoutingView(RoutingRecords):
    """The routing records (controlplane/routing_records.py: decoding and reading) kept in
    sync with the store, and the snapshots built from them."""

    def __init__(
        self,
        store: Store,
        layout: KeyLayout,
        *,
        on_sync: SyncListener | None = None,
        on_drain: DrainListener | None = None,
        on_removed: RemovalListener | None = None,
        on_version: VersionListener | None = None,
        on_listing: Callable[[], None] | None = None,
        probe_interval: float = 2.0,
        publish_interval: float = 0.0,
        load_publish_interval: float = 0.0,
    ) -> None:
        self._store = store
        self._layout = layout
        self._on_sync = on_sync
        self._on_drain = on_drain
        self._on_removed = on_removed
        self._on_version = on_version
        self._on_listing = on_listing
        self._probe_interval = probe_interval
        super().__init__()
        self._built: BuiltSnapshot | None = None
        # The store's cluster id, and the epoch of its routing history (routing/epoch: ""
        # until that history first went back); snapshots carry both (`cluster_id`).
        self.store_cluster = ""
        self.epoch = ""
        # The store's history went back: the next listing is taken whole (`_take_whole`),
        # and the epoch held before (`_rewound_epoch`) is replaced once listed.
        self._take_whole = False
        self._rewound_epoch: str | None = None
        # The store revision the view reflects; it only grows (within one history).
        self.revision = 0
        # The newest revision whose events are applied (a listing's, or an event's): events
        # at or below it are already in the view. Progress notices move `revision` only.
        self._applied = 0
        # The revision at which the content last changed; what snapshots carry.
        self.version = 0
        # Synced: listed and watching, and the store answered its last probe.
        self.synced = False
        self._watching = False
        self._store_ok = True
        self.listings = 0
        self._version_event = asyncio.Event()
        self._pacer = PublishPacer(
            self._publish,
            publish_interval=publish_interval,
            load_publish_interval=load_publish_interval,
        )
        # The snapshot subscribers get (None: build the newest on next ask).
        self._published: BuiltSnapshot | None = None
        self._progress_event = asyncio.Event()
        self._relist_lock = asyncio.Lock()

    @property
    def cluster_id(self) -> str:
        """The cluster id snapshots carry: the store's, with its routing history's epoch."""
        return history_label(self.store_cluster, self.epoch)

    # Running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the view in sync with the store (and say whether it is), until cancelled."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._follow(), name="routing watch")
                tasks.create_task(self._probe(), name="store probe")
        finally:
            self._pacer.cancel()  # no publish fires after the view stopped

    async def _follow(self) -> None:
        """List then watch, forever; re-list on compaction, retry while the store is down."""

        async def listed(revision: int, kvs: Sequence[KeyValue]) -> int:
            version = await self.last_event_revision(revision, kvs)
            self.apply_listing(revision, kvs, self._store.cluster_id, version=version)
            if self._rewound_epoch is not None:
                if self.epoch == self._rewound_epoch:
                    await self.renew_epoch()  # its event reaches the view by the watch
                self._rewound_epoch = None
            self._store_ok = True
            await self._set_watching(True)
            return self._applied

        await follow(
            self._store,
            self._layout.routing,
            "routing",
            listed,
            self.apply_batch,
            on_lost=lambda: self._set_watching(False),
            on_rewound=self.rewound,
        )

    def rewound(self) -> None:
        """The store's history went back under the view (etcd restored from a backup): the
        next listing is taken whole, and named by a new epoch unless the store has another
        than the view's already (edges hold versions of the view's that the store is now
        behind)."""
        self._take_whole = True
        if self._rewound_epoch is None:
            self._rewound_epoch = self.epoch

    async def renew_epoch(self) -> int:
        """Name the store's routing content by a new epoch (its history went back past what
        an edge applied); the revision at which the store has it, for the view to reach."""
        return await new_epoch(self._store, self._layout.routing_epoch, self.epoch)

    async def _probe(self) -> None:
        """Ask the store something small now and then: a watch that waits through an
        outage says nothing, but health must say when the store is gone."""
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                await self._store.get(self._layout.routing)
            except StoreClosedError:
                raise
            except StoreError as exc:
                if self._store_ok:
                    log.warning("store probe failed: %s", exc)
                self._store_ok = False
            else:
                self._store_ok = True
            await self._update_synced()

    async def _set_watching(self, watching: bool) -> None:
        self._watching = watching
        await self._update_synced()

    async def catch_up(self, at_least: int) -> None:
        """Re-list the store so the version reaches at_least, if the store has got there.

        For an edge that applied version `at_least` from another replica: the store's
        revision is at least that, so after a listing this view is too.
        """
        async with self._relist_lock:
            if self.version >= at_least:
                return
            revision, kvs = await self._store.get_prefix(self._layout.routing)
            version = await self.last_event_revision(revision, kvs)
            self.apply_listing(
                revision, kvs, self._store.cluster_id, version=version, at_least=at_least
            )

    async def last_event_revision(self, revision: int, kvs: Sequence[KeyValue]) -> int:
        """The version of a listing at `revision` that found `kvs` (controlplane/versions.py)."""
        return await last_event_revision(self._store, self._layout.routing, revision, kvs)

    async def _update_synced(self) -> None:
        synced = self._watching and self._store_ok
        if synced == self.synced:
            return
        self.synced = synced
        if self._on_sync is not None:
            await self._on_sync(synced)

    # Applying store data ----------------------------------------------------------------

    def apply_listing(
        self,
        revision: int,
        kvs: Sequence[KeyValue],
        cluster_id: str,
        *,
        version: int | None = None,
        at_least: int = 0,
    ) -> None:
        """Take a listing at `revision`. version: the revision of the last routing event at
        or below it (last_event_revision); None names the content by `revision`."""
        self.listings += 1
        if self._on_listing is not None:
            self._on_listing()
        if cluster_id != self.store_cluster or self._take_whole:
            if cluster_id != self.store_cluster and self.store_cluster:
                log.warning(
                    "store cluster id changed from %s to %s; starting over",
                    self.store_cluster,
                    cluster_id,
                )
            self.store_cluster = cluster_id
            self._take_whole = False
            self.revision = 0
            self._applied = 0
            self.version = 0
        elif revision <= self._applied:
            # Older than what we have: never go back. Our content at self.revision equals
            # the content at self.version, so a catch-up may name it by the later revision.
            if self.version < at_least:
                self._set_version(self.revision, routing=True)
            self._progress()
            return
        records = empty_records()
        epoch = ""
        for kv in kvs:
            if kv.key == self._layout.routing_epoch:
                epoch = epoch_of(kv.value)
                continue
            parsed = self._layout.parse_routing(kv.key)
            if parsed is not None:
                records[parsed[0]][parsed[1]] = kv.value
        old = self._records
        changed = records != old
        self._records = records
        self._applied = revision
        self.revision = max(self.revision, revision)
        if changed:
            self._backend_cache.clear()
            self._built = None
        if epoch != self.epoch:
            self.epoch = epoch
            self._built = None
            self._schedule_publish(routing=True)
        # Never back: a lower true version than ours means ours named this same content
        # by a later revision (a compacted listing).
        new_version = max(revision if version is None else version, self.version)
        if new_version < at_least:
            new_version = revision  # the edge's version names the content at `revision`
        self._set_version(new_version, routing=True)
        self._progress()
        if changed:
            self._notify_drains(old[RoutingKind.DRAIN], records[RoutingKind.DRAIN])
            gone = old[RoutingKind.SPEC].keys() - records[RoutingKind.SPEC].keys()
            self._notify_removed(sorted(gone))

    def apply_batch(self, batch: WatchBatch) -> None:
        last_event = 0
        # An event-less batch (a progress notice) vouches for every revision up to its own;
        # otherwise trust only the events themselves, so a later batch can never hold an
        # event we would take for one already applied.
        reached = batch.revision if not batch.events else 0
        drains_before: dict[str, bytes] | None = None
        removed: list[str] = []
        changed = False
        routing = False  # a change that decides routing (not load alone)
        floor = self._applied  # events of one revision (a transaction) share it
        for event in batch.events:
            kv = event.kv
            reached = max(reached, kv.mod_revision)
            if kv.mod_revision <= floor:
                continue  # already in the view (we listed after it): never go back
            self._applied = max(self._applied, kv.mod_revision)
            # Every event under the prefix names a version, as a listing would name it.
            last_event = kv.mod_revision
            if kv.key == self._layout.routing_epoch:
                epoch = epoch_of(kv.value if event.type is EventType.PUT else None)
                if epoch != self.epoch:
                    self.epoch = epoch
                    changed = routing = True
                continue
            parsed = self._layout.parse_routing(kv.key)
            if parsed is None:
                continue
            kind, name = parsed
            if kind is RoutingKind.DRAIN and drains_before is None:
                drains_before = dict(self._records[RoutingKind.DRAIN])
            value = kv.value if event.type is EventType.PUT else None
            old = self._records[kind].get(name)
            if self._apply_record(kind, name, value):
                changed = True
                if not routing and not (kind is RoutingKind.STATUS and load_only(old, value)):
                    routing = True
                if kind is RoutingKind.SPEC and value is None:
                    removed.append(name)
        self.revision = max(self.revision, reached, self._applied)
        if changed:
            self._built = None
        if last_event > self.version:
            self._set_version(last_event, routing=routing)
        elif routing:
            self._schedule_publish(routing=True)
        self._progress()
        if drains_before is not None:
            self._notify_drains(drains_before, self._records[RoutingKind.DRAIN])
        self._notify_removed(removed)

    def _notify_removed(self, names: list[str]) -> None:
        if self._on_removed is not None:
            for name in names:
                self._on_removed(name)

    def _notify_drains(self, before: dict[str, bytes], after: dict[str, bytes]) -> None:
        if self._on_drain is None:
            return
        for name in sorted(before.keys() | after.keys()):
            old, new = before.get(name), after.get(name)
            if (old is None) != (new is None):
                self._on_drain(name, DrainFlag.decode(new) if new is not None else None)

    def _set_version(self, version: int, *, routing: bool) -> None:
        if version == self.version:
            return
        self.version = version
        self._built = None
        self._schedule_publish(routing=routing)
        if self._on_version is not None:
            self._on_version(version)

    @property
    def publish_pending(self) -> bool:
        """A paced publish is scheduled and has not fired."""
        return self._pacer.pending

    def _schedule_publish(self, *, routing: bool) -> None:
        self._pacer.schedule(routing=routing)

    def _publish(self) -> None:
        self._published = None
        self.wake()

    def _progress(self) -> None:
        event, self._progress_event = self._progress_event, asyncio.Event()
        event.set()

    # Waiting ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Wake everyone waiting on the version (also at shutdown, to make them look)."""
        event, self._version_event = self._version_event, asyncio.Event()
        event.set()

    def version_event(self) -> asyncio.Event:
        """Set when the version next changes; take it before reading the version."""
        return self._version_event

    async def wait_revision(self, revision: int) -> None:
        """Wait until the view reflects store revision `revision` (read-your-writes)."""
        while self.revision < revision:
            await self._progress_event.wait()

    def published(self) -> BuiltSnapshot:
        """The snapshot subscribers get: the newest as of the last publish (built on the
        first ask after it, so it may carry changes made since)."""
        published = self._published
        if published is None:
            published = self._published = self.current()
        return published

    def current(self) -> BuiltSnapshot:
        """The snapshot at the view's version, built once per version."""
        built = self._built
        if built is None or built.version != self.version or built.cluster_id != self.cluster_id:
            built = self._built = self.build(self.version, self.cluster_id)
        return built
