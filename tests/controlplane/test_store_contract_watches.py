"""The Store contract on watches and event history: every implementation (memory, real etcd)
passes it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from controlplane.store import CompactedError, EventType, Store
from tests.controlplane.store_contract import WAIT, Harness, harness, store, watching

__all__ = ["harness", "store"]  # the fixtures every implementation runs under


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
