"""put_all_if, on every store (memory, real etcd): all writes in one revision, or none."""

from __future__ import annotations

import pytest

from controlplane.store import LeaseNotFoundError, Store
from controlplane.store.base import Write
from tests.controlplane.store_contract import harness, store, watching

__all__ = ["harness", "store"]  # the fixtures, shared with the contract tests


async def test_all_writes_land_in_one_revision_and_one_watch_batch(store: Store) -> None:
    """Two absent keys written together share one mod revision and arrive in one batch."""
    start = await store.put(b"/t/other", b"x")
    lease = await store.grant_lease(30)
    async with watching(store, b"/t/", start + 1) as watcher:
        outcome = await store.put_all_if(
            [Write(b"/t/a", b"1", 0, lease), Write(b"/t/b", b"2", 0, lease)]
        )
        assert outcome.written
        await watcher.wait_for(lambda events: len(events) == 2)
        [batch] = watcher.batches
        assert [e.kv.key for e in batch.events] == [b"/t/a", b"/t/b"]
    for key in (b"/t/a", b"/t/b"):
        kv = await store.get(key)
        assert kv is not None and (kv.mod_revision, kv.lease) == (outcome.revision, lease)


async def test_one_stale_condition_writes_nothing_and_reads_every_key(store: Store) -> None:
    """A wrong mod revision on one key leaves both keys alone and returns their values."""
    first = await store.put_all_if([Write(b"/t/a", b"1", 0), Write(b"/t/b", b"2", 0)])
    assert first.written
    moved = await store.put(b"/t/b", b"elsewhere")
    outcome = await store.put_all_if(
        [
            Write(b"/t/a", b"3", first.revision),
            Write(b"/t/b", b"4", first.revision),
            Write(b"/t/c", b"5", 0),
        ]
    )
    assert not outcome.written
    current = outcome.current
    assert current[b"/t/c"] is None
    a, b = current[b"/t/a"], current[b"/t/b"]
    assert a is not None and (a.value, a.mod_revision) == (b"1", first.revision)
    assert b is not None and (b.value, b.mod_revision) == (b"elsewhere", moved)
    assert await store.get(b"/t/c") is None
    retried = await store.put_all_if([Write(b"/t/b", b"4", moved), Write(b"/t/c", b"5", 0)])
    assert retried.written


async def test_an_unknown_lease_fails_the_whole_transaction(store: Store) -> None:
    """A write attached to a revoked lease raises LeaseNotFoundError and writes nothing."""
    lease = await store.grant_lease(30)
    await store.revoke_lease(lease)
    with pytest.raises(LeaseNotFoundError):
        await store.put_all_if([Write(b"/t/a", b"1", 0), Write(b"/t/b", b"2", 0, lease)])
    assert await store.get(b"/t/a") is None
