"""The Store contract on leases: every implementation (memory, real etcd) passes it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from controlplane.store import EventType, LeaseNotFoundError, Store
from tests.controlplane.store_contract import deleted, harness, store, watching

__all__ = ["harness", "store"]  # the fixtures every implementation runs under


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
