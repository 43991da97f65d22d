"""MemoryStore specifics beyond the shared contract: bounded history, closing, takeover."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from controlplane.store import CompactedError, MemoryStore, StoreClosedError


async def test_history_is_bounded() -> None:
    """Only the last `history` revisions are kept; watching from before them is compacted."""
    async with MemoryStore(history=3) as store:
        first = await store.put(b"/h/a", b"1")
        for i in range(4):
            last = await store.put(b"/h/a", str(i).encode())
        with pytest.raises(CompactedError) as caught:
            async with contextlib.aclosing(store.watch_prefix(b"/h/", first)) as stream:
                await anext(stream)
        assert caught.value.compact_revision == last - 2
        async with contextlib.aclosing(store.watch_prefix(b"/h/", last - 2)) as stream:
            batch = await anext(stream)
        assert [e.kv.mod_revision for e in batch.events] == [last - 2, last - 1, last]


async def test_close_ends_watches_with_closed_error() -> None:
    """Closing the store ends a waiting watch with StoreClosedError, not a hang."""
    store = MemoryStore()
    await store.start()
    stream = store.watch_prefix(b"/", store.revision + 1)
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)  # let the watch reach its wait
    assert not waiting.done()  # waiting: what close() must end
    await store.close()
    with pytest.raises(StoreClosedError):
        await waiting
    with pytest.raises(StoreClosedError):
        await store.put(b"/x", b"y")


async def test_keep_lease_takes_over_a_released_lease() -> None:
    """keep_lease on a lease that is running out stops the countdown and reports what is left."""
    async with MemoryStore() as store:
        lease = await store.grant_lease(30)
        await store.put(b"/t/k", b"v", lease=lease)
        store.release_lease(lease)
        remaining = await store.keep_lease(lease)
        assert 0 < remaining <= 30
        assert lease in store.lease_ids()
        await store.revoke_lease(lease)
        assert store.lease_ids() == []
        assert await store.get(b"/t/k") is None
