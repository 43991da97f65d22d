"""The Store contract: every implementation (memory, real etcd) passes the same tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from controlplane.store import (
    CompactedError,
    EventType,
    LeaseNotFoundError,
    MemoryStore,
    Store,
    WatchBatch,
    WatchEvent,
)

STORES = ["memory", "etcd"]
WAIT = 15.0  # generous bound on waits for events; tests finish as soon as they arrive


@dataclass
class Harness:
    store: Store
    compact: Callable[[int], Awaitable[None]]


@pytest.fixture(params=STORES)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        memory = MemoryStore()

        async def compact_memory(revision: int) -> None:
            memory.compact(revision)

        async with memory:
            yield Harness(memory, compact_memory)
        return

    from controlplane.store import EtcdStore

    cluster = request.getfixturevalue("etcd")

    async def compact_etcd(revision: int) -> None:
        await asyncio.to_thread(cluster.etcdctl, "compact", str(revision))

    async with EtcdStore(cluster.endpoints) as etcd_store:
        yield Harness(etcd_store, compact_etcd)


@pytest.fixture
def store(harness: Harness) -> Store:
    return harness.store


class Watcher:
    """Reads a watch in the background so tests can wait for specific events."""

    def __init__(self, stream: AsyncIterator[WatchBatch]) -> None:
        self.batches: list[WatchBatch] = []
        self._stream = stream
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with contextlib.aclosing(self._stream) as stream:
            async for batch in stream:
                self.batches.append(batch)
                self._arrived.set()

    @property
    def events(self) -> list[WatchEvent]:
        return [e for b in self.batches for e in b.events]

    async def wait_for(self, check: Callable[[list[WatchEvent]], bool]) -> list[WatchEvent]:
        async with asyncio.timeout(WAIT):
            while not check(self.events):
                if self._task.done():
                    self._task.result()
                    raise AssertionError("watch ended")
                self._arrived.clear()
                await asyncio.wait(
                    [asyncio.ensure_future(self._arrived.wait()), self._task],
                    return_when=asyncio.FIRST_COMPLETED,
                )
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watching(store: Store, prefix: bytes, start_revision: int) -> AsyncIterator[Watcher]:
    watcher = Watcher(store.watch_prefix(prefix, start_revision))
    try:
        yield watcher
    finally:
        await watcher.close()


def deleted(key: bytes) -> Callable[[list[WatchEvent]], bool]:
    return lambda events: any(e.type is EventType.DELETE and e.kv.key == key for e in events)


async def test_put_get_and_revisions(store: Store) -> None:
    """Each put bumps the revision by one; get returns value, mod and create revisions."""
    r1 = await store.put(b"/t/a", b"1")
    r2 = await store.put(b"/t/b", b"2")
    r3 = await store.put(b"/t/a", b"3")
    assert (r2, r3) == (r1 + 1, r1 + 2)
    a = await store.get(b"/t/a")
    assert a is not None
    assert (a.key, a.value, a.mod_revision, a.create_revision, a.lease) == (
        b"/t/a",
        b"3",
        r3,
        r1,
        0,
    )
    assert await store.get(b"/t/missing") is None


async def test_get_prefix_sorted_and_bounded(store: Store) -> None:
    """get_prefix returns only keys under the prefix, sorted, with the current revision."""
    for key in (b"/p/c", b"/p/a", b"/q/x", b"/p/b", b"/o/z", b"/p"):
        last = await store.put(key, key)
    revision, kvs = await store.get_prefix(b"/p/")
    assert revision == last
    assert [kv.key for kv in kvs] == [b"/p/a", b"/p/b", b"/p/c"]
    assert [kv.value for kv in kvs] == [b"/p/a", b"/p/b", b"/p/c"]
    _, everything = await store.get_prefix(b"")
    assert [kv.key for kv in everything] == sorted(
        [b"/p/c", b"/p/a", b"/q/x", b"/p/b", b"/o/z", b"/p"]
    )


async def test_put_if_mod_revision(store: Store) -> None:
    """put_if with expect_mod_revision writes only when the key's mod_revision matches."""
    assert await store.put_if(b"/k", b"v1", expect_mod_revision=0)
    assert not await store.put_if(b"/k", b"v2", expect_mod_revision=0)
    kv = await store.get(b"/k")
    assert kv is not None and kv.value == b"v1"
    assert await store.put_if(b"/k", b"v3", expect_mod_revision=kv.mod_revision)
    assert not await store.put_if(b"/k", b"v4", expect_mod_revision=kv.mod_revision)
    after = await store.get(b"/k")
    assert after is not None and after.value == b"v3"


async def test_put_if_absent_or_lease(store: Store) -> None:
    """A key can be claimed when absent and re-claimed by its own lease, never by another."""
    mine = await store.grant_lease(30)
    theirs = await store.grant_lease(30)
    try:
        assert await store.put_if(b"/b/x", b"mine", lease=mine, expect_absent_or_lease=mine)
        assert not await store.put_if(
            b"/b/x", b"theirs", lease=theirs, expect_absent_or_lease=theirs
        )
        assert await store.put_if(b"/b/x", b"mine2", lease=mine, expect_absent_or_lease=mine)
        kv = await store.get(b"/b/x")
        assert kv is not None and (kv.value, kv.lease) == (b"mine2", mine)
        # A key without a lease is held by nobody's lease: no lease may take it.
        await store.put(b"/b/plain", b"p")
        assert not await store.put_if(
            b"/b/plain", b"t", lease=theirs, expect_absent_or_lease=theirs
        )
        # Both conditions together must both hold.
        assert not await store.put_if(
            b"/b/x", b"m3", lease=mine, expect_absent_or_lease=mine, expect_mod_revision=1
        )
        assert await store.put_if(
            b"/b/x",
            b"m3",
            lease=mine,
            expect_absent_or_lease=mine,
            expect_mod_revision=kv.mod_revision,
        )
    finally:
        await store.revoke_lease(mine)
        await store.revoke_lease(theirs)


async def test_put_with_unknown_lease_fails(store: Store) -> None:
    """Attaching a key to a lease that does not exist raises LeaseNotFoundError."""
    lease = await store.grant_lease(30)
    await store.revoke_lease(lease)
    with pytest.raises(LeaseNotFoundError):
        await store.put(b"/l/k", b"v", lease=lease)
    assert await store.get(b"/l/k") is None


async def test_delete_and_delete_prefix(store: Store) -> None:
    """delete removes one key, delete_prefix a whole prefix; absent keys are no error."""
    await store.put(b"/d/a", b"1")
    await store.put(b"/d/b", b"2")
    await store.put(b"/d/c/x", b"3")
    await store.put(b"/e/a", b"4")
    r = await store.delete(b"/d/a")
    assert await store.get(b"/d/a") is None
    assert await store.delete(b"/d/a") == r  # nothing deleted, no new revision
    r2 = await store.delete_prefix(b"/d/")
    assert r2 == r + 1  # one revision for the whole prefix
    _, left = await store.get_prefix(b"/")
    assert [kv.key for kv in left] == [b"/e/a"]


async def test_watch_from_start_revision_sees_exactly_later_events(store: Store) -> None:
    """A watch from revision R yields exactly the prefix's events at R and later, in order."""
    await store.put(b"/w/a", b"0")
    start = await store.put(b"/w/b", b"1")
    await store.put(b"/x/other", b"no")
    await store.put(b"/w/a", b"2")
    await store.delete(b"/w/b")
    async with watching(store, b"/w/", start) as watcher:
        await store.put(b"/w/c", b"3")
        events = await watcher.wait_for(lambda ev: any(e.kv.key == b"/w/c" for e in ev))
        assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
            (EventType.PUT, b"/w/b", b"1"),
            (EventType.PUT, b"/w/a", b"2"),
            (EventType.DELETE, b"/w/b", b""),
            (EventType.PUT, b"/w/c", b"3"),
        ]
        revisions = [e.kv.mod_revision for e in events]
        assert revisions == [start, start + 2, start + 3, start + 4]
        assert watcher.batches[-1].revision >= start + 4


async def test_watch_compacted_revision_raises(harness: Harness) -> None:
    """Watching from a compacted revision raises CompactedError naming the oldest kept one."""
    store = harness.store
    first = await store.put(b"/c/a", b"1")
    await store.put(b"/c/a", b"2")
    last = await store.put(b"/c/a", b"3")
    await harness.compact(last)
    with pytest.raises(CompactedError) as caught:
        async with contextlib.aclosing(store.watch_prefix(b"/c/", first)) as stream:
            async with asyncio.timeout(WAIT):
                await anext(stream)
    assert caught.value.compact_revision == last
    # The compaction point itself is still watchable.
    async with watching(store, b"/c/", last) as watcher:
        events = await watcher.wait_for(bool)
        assert [(e.kv.value, e.kv.mod_revision) for e in events] == [(b"3", last)]


async def test_lease_expiry_removes_keys_and_emits_delete(store: Store) -> None:
    """A released lease expires after its TTL: its keys vanish and watchers see DELETEs."""
    lease = await store.grant_lease(1)
    start = await store.put(b"/s/a", b"1", lease=lease)
    await store.put(b"/s/b", b"2", lease=lease)
    kv = await store.get(b"/s/a")
    assert kv is not None and kv.lease == lease
    async with watching(store, b"/s/", start + 2) as watcher:
        store.release_lease(lease)
        await watcher.wait_for(lambda ev: deleted(b"/s/a")(ev) and deleted(b"/s/b")(ev))
    assert await store.get(b"/s/a") is None
    assert await store.get(b"/s/b") is None
    with pytest.raises(LeaseNotFoundError):
        await store.keep_lease(lease)


async def test_kept_lease_outlives_its_ttl(store: Store) -> None:
    """A kept lease survives while a lease with the same TTL granted later expires."""
    kept = await store.grant_lease(2)
    await store.put(b"/k/kept", b"1", lease=kept)
    doomed = await store.grant_lease(2)
    start = await store.put(b"/k/doomed", b"1", lease=doomed)
    async with watching(store, b"/k/", start + 1) as watcher:
        store.release_lease(doomed)
        events = await watcher.wait_for(deleted(b"/k/doomed"))
    assert not deleted(b"/k/kept")(events)
    kv = await store.get(b"/k/kept")
    assert kv is not None and kv.lease == kept
    assert 0 < await store.keep_lease(kept) <= 2
    await store.revoke_lease(kept)


async def test_revoke_deletes_at_once(store: Store) -> None:
    """Revoking a lease deletes its keys immediately (one revision); revoking again is fine."""
    lease = await store.grant_lease(30)
    await store.put(b"/r/a", b"1", lease=lease)
    start = await store.put(b"/r/b", b"1", lease=lease)
    async with watching(store, b"/r/", start + 1) as watcher:
        await store.revoke_lease(lease)
        assert await store.get(b"/r/a") is None
        assert await store.get(b"/r/b") is None
        events = await watcher.wait_for(lambda ev: len(ev) >= 2)
        assert sorted((e.type, e.kv.key, e.kv.mod_revision) for e in events) == [
            (EventType.DELETE, b"/r/a", start + 1),
            (EventType.DELETE, b"/r/b", start + 1),
        ]
    await store.revoke_lease(lease)
    with pytest.raises(LeaseNotFoundError):
        await store.keep_lease(lease)


async def test_keep_lease_on_expired_lease_raises(store: Store) -> None:
    """keep_lease on a lease that ran out raises LeaseNotFoundError; on a live one, its TTL."""
    lease = await store.grant_lease(1)
    start = await store.put(b"/x/k", b"1", lease=lease)
    # keep_lease on a lease we already keep is harmless and reports its TTL.
    assert 0 < await store.keep_lease(lease) <= 1
    async with watching(store, b"/x/", start + 1) as watcher:
        store.release_lease(lease)
        await watcher.wait_for(deleted(b"/x/k"))
    with pytest.raises(LeaseNotFoundError):
        await store.keep_lease(lease)


async def test_cluster_id_stable(store: Store) -> None:
    """cluster_id is a non-empty hex string that does not change while the store lives."""
    first = store.cluster_id
    assert first and int(first, 16) >= 0
    await store.put(b"/id", b"1")
    assert store.cluster_id == first


async def test_refreshed_lease_runs_out_a_ttl_after_its_last_refresh(store: Store) -> None:
    """A lease granted without keepalive lives on refresh_lease alone, then runs out."""
    refreshed = await store.grant_lease(2, keep=False)
    await store.put(b"/o/refreshed", b"1", lease=refreshed)
    # Granted after `refreshed` with the same TTL: without refreshes it would outlive it.
    doomed = await store.grant_lease(2, keep=False)
    start = await store.put(b"/o/doomed", b"1", lease=doomed)

    async def refresh_forever() -> None:
        while True:
            store.refresh_lease(refreshed)
            await asyncio.sleep(0.3)  # an agent's pace, not synchronisation

    refresher = asyncio.create_task(refresh_forever())
    try:
        async with watching(store, b"/o/", start + 1) as watcher:
            events = await watcher.wait_for(deleted(b"/o/doomed"))
            assert not deleted(b"/o/refreshed")(events)
            assert await store.check_lease(refreshed) >= 1
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await watcher.wait_for(deleted(b"/o/refreshed"))
    finally:
        refresher.cancel()
    with pytest.raises(LeaseNotFoundError):
        await store.check_lease(refreshed)
    # Refreshing a lease that is gone is harmless and does not bring it back.
    store.refresh_lease(refreshed)
    with pytest.raises(LeaseNotFoundError):
        await store.check_lease(refreshed)


async def test_check_lease_does_not_keep_it(store: Store) -> None:
    """check_lease reports a live lease's TTL without keeping it; a gone one raises."""
    lease = await store.grant_lease(1, keep=False)
    start = await store.put(b"/v/k", b"1", lease=lease)
    assert await store.check_lease(lease) == 1
    async with watching(store, b"/v/", start + 1) as watcher:
        while not deleted(b"/v/k")(watcher.events):
            with contextlib.suppress(LeaseNotFoundError):
                await store.check_lease(lease)
            await asyncio.sleep(0.1)  # polling pace; the watcher decides when it is over
    with pytest.raises(LeaseNotFoundError):
        await store.check_lease(lease)


async def test_last_event_revision_sees_deletes_and_ignores_other_prefixes(
    harness: Harness,
) -> None:
    """last_event_revision: the last write or delete under a prefix in a revision range."""
    store = harness.store
    first = await store.put(b"/e/a", b"1")
    await store.put(b"/f/x", b"1")
    deleted_at = await store.delete(b"/e/a")
    outside = await store.put(b"/f/y", b"1")
    assert await store.last_event_revision(b"/e/", first, outside) == deleted_at
    assert await store.last_event_revision(b"/e/", first, deleted_at - 1) == first
    assert await store.last_event_revision(b"/e/", deleted_at + 1, outside) == 0
    assert await store.last_event_revision(b"/none/", first, outside) == 0
    # The range may end at the current revision, and later writes do not count.
    later = await store.put(b"/e/b", b"1")
    assert await store.last_event_revision(b"/e/", first, outside) == deleted_at
    assert await store.last_event_revision(b"/e/", first, later) == later
    await harness.compact(outside)
    with pytest.raises(CompactedError):
        await store.last_event_revision(b"/e/", first, later)


async def test_a_refresh_that_finds_the_lease_gone_is_reported(store: Store) -> None:
    """refresh_lease on a revoked lease calls the lost-lease listener with its id."""
    lost: asyncio.Queue[int] = asyncio.Queue()
    store.set_lease_lost_listener(lost.put_nowait)
    alive = await store.grant_lease(30, keep=False)
    gone = await store.grant_lease(30, keep=False)
    await store.revoke_lease(gone)
    store.refresh_lease(alive)
    store.refresh_lease(gone)
    assert await asyncio.wait_for(lost.get(), 10) == gone
    assert await store.check_lease(alive) >= 1
    assert lost.empty()
