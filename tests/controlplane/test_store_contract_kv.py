"""The Store contract on keys, revisions and the cluster id: every implementation (memory, real
etcd) passes it."""

from __future__ import annotations

import pytest

from controlplane.store import LeaseNotFoundError, Store
from tests.controlplane.store_contract import harness, store

__all__ = ["harness", "store"]  # the fixtures every implementation runs under


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


async def test_cluster_id_stable(store: Store) -> None:
    """cluster_id is a non-empty hex string that does not change while the store lives."""
    first = store.cluster_id
    assert first and int(first, 16) >= 0
    await store.put(b"/id", b"1")
    assert store.cluster_id == first
