"""EtcdStore against real etcd failures: restarts, killed members, a cluster that is all down."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.store import EtcdStore, EventType, StoreError, StoreUnavailableError
from tests.controlplane.store_contract import Watcher, deleted, watching
from tests.support.etcd import EtcdCluster, EtcdMember
from tests.support.net import eventually


@pytest.fixture
def etcd_tls() -> Iterator[EtcdCluster]:
    """A single-member etcd that only speaks TLS and requires client certificates."""
    cluster = EtcdCluster.create(1, tls=True).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def leader_first(cluster: EtcdCluster) -> list[str]:
    """The cluster's endpoints, the leader's first (so killing the member in use is harder)."""
    status = json.loads(cluster.etcdctl("endpoint", "status", "--write-out=json"))
    leader = status[0]["Status"]["leader"]
    ordered = sorted(status, key=lambda s: s["Status"]["header"]["member_id"] != leader)
    return [s["Endpoint"] for s in ordered]


def member_for(cluster: EtcdCluster, store: EtcdStore) -> EtcdMember:
    """The member the store is talking to now."""
    return next(m for m in cluster.members if m.client_url == store.endpoint)


async def restart_member(member: EtcdMember) -> None:
    """SIGKILL a member, start it again, wait until it is healthy."""

    def crash_and_recover() -> None:
        member.kill()
        member.start()
        member.wait_healthy()

    await asyncio.to_thread(crash_and_recover)


def puts(watcher: Watcher) -> list[tuple[bytes, int]]:
    return [(e.kv.key, e.kv.mod_revision) for e in watcher.events if e.type is EventType.PUT]


async def test_watch_resumes_across_etcd_crash(etcd: EtcdCluster) -> None:
    """A watch survives an etcd crash and restart: it resumes with no lost or repeated events."""
    async with EtcdStore(etcd.endpoints) as store:
        first = await store.put(b"/w/0", b"before")
        async with watching(store, b"/w/", first) as watcher:
            second = await store.put(b"/w/1", b"before")
            await watcher.wait_for(lambda ev: len(ev) == 2)
            await restart_member(etcd.members[0])
            # Written by someone else while our watch may still be reconnecting.
            await asyncio.to_thread(etcd.etcdctl, "put", "/w/2", "after")
            third = await store.put(b"/w/3", b"after")
            await watcher.wait_for(lambda ev: any(e.kv.key == b"/w/3" for e in ev))
            assert puts(watcher) == [
                (b"/w/0", first),
                (b"/w/1", second),
                (b"/w/2", third - 1),
                (b"/w/3", third),
            ]


async def test_failover_when_member_in_use_is_killed(etcd3: EtcdCluster) -> None:
    """Killing the member a store talks to (the leader) moves reads, writes and watches on."""
    async with EtcdStore(leader_first(etcd3)) as store:
        start = await store.put(b"/f/a", b"1")
        async with watching(store, b"/f/", start) as watcher:
            await watcher.wait_for(bool)
            victim = member_for(etcd3, store)
            await asyncio.to_thread(victim.kill)
            after = await store.put(b"/f/b", b"2")
            assert store.endpoint != victim.client_url
            kv = await store.get(b"/f/b")
            assert kv is not None and kv.mod_revision == after
            await watcher.wait_for(lambda ev: any(e.kv.key == b"/f/b" for e in ev))
            assert puts(watcher) == [(b"/f/a", start), (b"/f/b", after)]


async def test_lease_kept_alive_across_member_kill(etcd3: EtcdCluster) -> None:
    """A kept lease outlives its TTL although the member (leader) carrying its keepalives died."""
    # TTL 4 s, not 2: the keeper's failover waits out a leader election, and on a busy machine
    # that took longer than a 2 s lease could wait (the kept lease ran out first, once).
    async with EtcdStore(leader_first(etcd3)) as store:
        kept = await store.grant_lease(4)
        await store.put(b"/l/kept", b"1", lease=kept)
        await eventually(lambda: store.lease_keeper.refreshes >= 1)
        streams_before = store.lease_keeper.streams_opened
        await asyncio.to_thread(member_for(etcd3, store).kill)
        # A lease with the same TTL granted after the kill, and not kept, runs out first.
        doomed = await store.grant_lease(4)
        start = await store.put(b"/l/doomed", b"1", lease=doomed)
        async with watching(store, b"/l/", start + 1) as watcher:
            store.release_lease(doomed)
            events = await watcher.wait_for(deleted(b"/l/doomed"))
        assert not deleted(b"/l/kept")(events)
        kv = await store.get(b"/l/kept")
        assert kv is not None and kv.lease == kept
        assert store.lease_keeper.streams_opened > streams_before


async def test_one_keepalive_stream_for_all_leases(etcd: EtcdCluster) -> None:
    """Many leases are refreshed over one keepalive stream, not a new stream per heartbeat."""
    async with EtcdStore(etcd.endpoints) as store:
        leases = [await store.grant_lease(1) for _ in range(5)]
        await eventually(lambda: store.lease_keeper.refreshes >= 3 * len(leases))
        assert store.lease_keeper.streams_opened == 1
        assert sorted(store.lease_keeper.kept()) == sorted(leases)


async def test_a_lone_kept_lease_is_refreshed_again_and_again(etcd: EtcdCluster) -> None:
    """One kept lease and nothing else going on: refreshed every third of its TTL, for good."""
    async with EtcdStore(etcd.endpoints) as store:
        lease = await store.grant_lease(1)
        await eventually(lambda: store.lease_keeper.refreshes >= 6)  # ~2 s: several TTLs
        assert await store.check_lease(lease) > 0


async def test_closing_leaves_no_keepalive_task_behind(etcd: EtcdCluster) -> None:
    """Closing the store ends the keeper and every task of its open stream (none orphaned)."""
    async with EtcdStore(etcd.endpoints) as store:
        await store.grant_lease(30)
        await eventually(lambda: store.lease_keeper.refreshes >= 1)
        assert keeper_tasks()
    assert keeper_tasks() == []


def keeper_tasks() -> list[str]:
    return sorted(
        t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("etcd-keepalive")
    )


async def test_one_shot_refreshes_share_the_one_keepalive_stream(etcd: EtcdCluster) -> None:
    """refresh_lease sends keepalives on the store's one stream; a burst is coalesced."""
    async with EtcdStore(etcd.endpoints) as store:
        kept = await store.grant_lease(30)
        leases = [await store.grant_lease(30, keep=False) for _ in range(5)]
        assert store.lease_keeper.kept() == [kept]
        await eventually(lambda: store.lease_keeper.refreshes >= 1)
        before = store.lease_keeper.refreshes
        for _ in range(10):  # arrive together: one keepalive per lease
            for lease in leases:
                store.refresh_lease(lease)
        await eventually(lambda: store.lease_keeper.refreshes >= before + len(leases))
        assert store.lease_keeper.refreshes < before + 2 * len(leases)
        for lease in leases:
            store.refresh_lease(lease)
        await eventually(lambda: store.lease_keeper.refreshes >= before + 2 * len(leases))
        assert store.lease_keeper.streams_opened == 1
        assert store.lease_keeper.kept() == [kept]


async def test_lease_answer_age_counts_from_the_last_confirmed_refresh(etcd: EtcdCluster) -> None:
    """lease_answer_age is infinite before any refresh is confirmed, small just after one."""
    async with EtcdStore(etcd.endpoints) as store:
        assert store.lease_answer_age() == float("inf")
        lease = await store.grant_lease(30, keep=False)
        store.refresh_lease(lease)
        await eventually(lambda: store.lease_keeper.refreshes >= 1)
        assert store.lease_answer_age() < 10


async def test_another_replica_takes_over_a_lease(etcd: EtcdCluster) -> None:
    """A second store keeps a lease the first one let go; both see the same cluster id."""
    async with EtcdStore(etcd.endpoints) as first, EtcdStore(etcd.endpoints) as second:
        status = json.loads(etcd.etcdctl("endpoint", "status", "--write-out=json"))
        expected = format(status[0]["Status"]["header"]["cluster_id"], "x")
        assert first.cluster_id == second.cluster_id == expected
        lease = await first.grant_lease(2)
        await first.put(b"/t/session", b"s", lease=lease)
        assert 0 < await second.keep_lease(lease) <= 2
        first.release_lease(lease)
        await first.close()
        doomed = await second.grant_lease(2)
        start = await second.put(b"/t/doomed", b"1", lease=doomed)
        async with watching(second, b"/t/", start + 1) as watcher:
            second.release_lease(doomed)
            await watcher.wait_for(deleted(b"/t/doomed"))
        kv = await second.get(b"/t/session")
        assert kv is not None and kv.lease == lease


async def test_unavailable_when_every_member_is_down(etcd3: EtcdCluster) -> None:
    """With every member down, calls raise StoreUnavailableError after connect_timeout."""
    async with EtcdStore(etcd3.endpoints, connect_timeout=1.0) as store:
        await store.put(b"/u/a", b"1")
        await asyncio.to_thread(lambda: [m.kill() for m in etcd3.members])
        with pytest.raises(StoreUnavailableError):
            await store.put(b"/u/b", b"2")
        with pytest.raises(StoreUnavailableError):
            await store.get(b"/u/a")
        with pytest.raises(StoreUnavailableError):
            await EtcdStore(etcd3.endpoints, connect_timeout=0.5).start()


async def test_tls_with_client_certificate(etcd_tls: EtcdCluster) -> None:
    """https:// endpoints use TLS with our CA and client certificate; without it etcd refuses."""
    tls = etcd_tls.members[0].tls
    assert tls is not None and etcd_tls.endpoints[0].startswith("https://")
    async with EtcdStore(
        etcd_tls.endpoints,
        ca_file=str(tls.ca),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    ) as store:
        revision = await store.put(b"/tls/k", b"v")
        async with watching(store, b"/tls/", revision) as watcher:
            events = await watcher.wait_for(bool)
        assert [(e.kv.key, e.kv.value) for e in events] == [(b"/tls/k", b"v")]
    with pytest.raises(StoreUnavailableError):
        await EtcdStore(etcd_tls.endpoints, ca_file=str(tls.ca), connect_timeout=1.0).start()


async def test_keeper_drops_a_lease_revoked_elsewhere(etcd: EtcdCluster) -> None:
    """When another replica revokes a lease we keep, the keepalive answer (TTL 0) drops it."""
    async with EtcdStore(etcd.endpoints) as mine, EtcdStore(etcd.endpoints) as other:
        lease = await mine.grant_lease(1)
        survivor = await mine.grant_lease(1)
        await other.revoke_lease(lease)
        await eventually(lambda: lease not in mine.lease_keeper.kept())
        assert mine.lease_keeper.kept() == [survivor]
        assert mine.lease_keeper.streams_opened == 1


async def test_a_refresh_of_a_lease_revoked_elsewhere_is_reported(etcd: EtcdCluster) -> None:
    """A one-shot refresh answered TTL 0 (revoked by another replica) reaches the listener."""
    async with EtcdStore(etcd.endpoints) as mine, EtcdStore(etcd.endpoints) as other:
        lost: asyncio.Queue[int] = asyncio.Queue()
        mine.set_lease_lost_listener(lost.put_nowait)
        lease = await mine.grant_lease(30, keep=False)
        await other.revoke_lease(lease)
        mine.refresh_lease(lease)
        assert await asyncio.wait_for(lost.get(), 10) == lease
        assert mine.lease_keeper.lost == 1


async def test_one_shot_refreshes_move_off_a_frozen_member(etcd3: EtcdCluster) -> None:
    """Unanswered refreshes move keepalive off a frozen member in the stall limit; leases live."""
    async with EtcdStore(leader_first(etcd3), stall_timeout=0.5) as store:
        session = await store.grant_lease(2, keep=False)
        start = await store.put(b"/s/session", b"1", lease=session)
        store.refresh_lease(session)
        await eventually(lambda: store.lease_keeper.refreshes >= 1)
        frozen = member_for(etcd3, store)
        opened = store.lease_keeper.streams_opened
        frozen.pause()
        try:

            async def speak() -> None:
                while True:
                    store.refresh_lease(session)
                    await asyncio.sleep(0.3)  # an agent's pace, not synchronisation

            agent = asyncio.create_task(speak())
            try:
                await eventually(lambda: store.lease_keeper.streams_opened > opened, within=10)
                answered = store.lease_keeper.refreshes
                await eventually(lambda: store.lease_keeper.refreshes > answered + 3, within=10)
                # Alive well past its 2 s TTL from before the freeze.
                assert await store.check_lease(session) >= 1
                async with watching(store, b"/s/", start + 1) as watcher:
                    assert not deleted(b"/s/session")(watcher.events)
            finally:
                agent.cancel()
                await asyncio.gather(agent, return_exceptions=True)
        finally:
            frozen.resume()


async def test_frozen_member_is_left_behind(etcd3: EtcdCluster) -> None:
    """A frozen (SIGSTOP) member is left by calls, watch, keepalive; lease kept, no event lost."""
    async with EtcdStore(leader_first(etcd3), probe_interval=0.5, stall_timeout=0.5) as store:
        kept = await store.grant_lease(2)
        start = await store.put(b"/z/kept", b"1", lease=kept)
        frozen = member_for(etcd3, store)
        async with watching(store, b"/z/", start) as watcher:
            await watcher.wait_for(bool)
            frozen.pause()
            try:
                after = await store.put(b"/z/after", b"2")
                await watcher.wait_for(lambda ev: (b"/z/after", after) in puts(watcher))
                # A put whose answer is late is sent again (the same key and value: EtcdStore
                # treats a put as idempotent), so on a slow machine the key may have been
                # written twice; each write is an event, none lost, the last one ours.
                seen = puts(watcher)
                assert seen[0] == (b"/z/kept", start)
                assert {key for key, _ in seen[1:]} == {b"/z/after"}
                assert seen[-1] == (b"/z/after", after)
                # A lease granted now, and not kept, runs out; the kept one does not.
                doomed = await store.grant_lease(2)
                await store.put(b"/z/doomed", b"1", lease=doomed)
                store.release_lease(doomed)
                await watcher.wait_for(deleted(b"/z/doomed"))
                assert not deleted(b"/z/kept")(watcher.events)
                kv = await store.get(b"/z/kept")
                assert kv is not None and kv.lease == kept
            finally:
                frozen.resume()


def test_bad_configuration_is_a_store_error(tmp_path: Path) -> None:
    """A malformed endpoint or an unreadable TLS file is a clear StoreError at construction."""
    with pytest.raises(StoreError, match="bad etcd endpoint"):
        EtcdStore(["ftp://127.0.0.1:2379"])
    with pytest.raises(StoreError, match="no etcd endpoints"):
        EtcdStore([])
    with pytest.raises(StoreError, match="TLS file"):
        EtcdStore(["https://127.0.0.1:2379"], ca_file=str(tmp_path / "missing.pem"))
