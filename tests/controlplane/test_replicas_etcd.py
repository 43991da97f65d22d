"""Control-plane replicas through etcd's failures: an etcd restart is survived, health is
NOT_SERVING until etcd is up, a compaction is survived by re-listing, and an outage refuses
writes and, past a short grace, sends edges to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc
import pytest

import controlplane.server
from controlplane.store import EtcdStore
from corral.v1 import admin_pb2, types_pb2
from tests.controlplane import harness as h
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually


async def test_etcd_restart_is_survived(etcd: EtcdCluster) -> None:
    """After etcd restarts, the replica serves again on the same snapshot stream."""
    cfg = h.etcd_config(etcd.endpoints, lease_ttl_seconds=30.0)
    async with h.running(cfg) as address:
        watcher = h.SnapshotWatcher(address)
        before = h.AgentClient(address)
        await before.connect(h.register("before"))
        await watcher.until(h.has("before"))
        await asyncio.to_thread(etcd.restart)
        after = h.AgentClient(address)

        async def registers() -> bool:
            try:
                await after.connect(h.register("after"))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                return False
            return True

        await eventually(registers, within=30)
        snapshot = await watcher.until(h.has("after"), within=20)
        assert h.names(snapshot) == ["after", "before"]
        await before.report(h.status(health=types_pb2.HEALTH_STATE_DEGRADED))
        await watcher.until(
            lambda s: s.backends[1].status.health == types_pb2.HEALTH_STATE_DEGRADED
        )
        assert await h.health_status(address) == h.SERVING
        versions = [s.version for s in watcher.snapshots]
        assert versions == sorted(versions)
        await after.close()
        await before.close()
        await watcher.close()


async def test_health_is_not_serving_until_etcd_is_up() -> None:
    """A replica whose etcd is not up yet answers NOT_SERVING, then SERVING once it syncs."""
    cluster = EtcdCluster.create(1)
    try:
        cfg = h.etcd_config(cluster.endpoints)
        async with h.running(cfg, wait_ready=False) as address:
            await eventually(lambda: _is(address, h.NOT_SERVING), within=15)
            watcher = h.SnapshotWatcher(address)
            with contextlib.suppress(AssertionError):
                await watcher.until(lambda s: True, within=5)
            assert watcher.error is not None
            assert watcher.error.code() == grpc.StatusCode.UNAVAILABLE
            await watcher.close()
            await asyncio.to_thread(cluster.start)
            await eventually(lambda: _is(address, h.SERVING), within=30)
            agent = h.AgentClient(address)
            await agent.connect(h.register("b"))
            await agent.close()
    finally:
        cluster.stop()


async def _is(address: str, status: int) -> bool:
    return await h.health_status(address) == status


async def test_compaction_is_survived_by_relisting(etcd: EtcdCluster, tmp_path: Path) -> None:
    """A replica whose watch fell behind a compaction re-lists and never goes back in time."""
    metrics_port = h.free_port()
    replica = h.ControlPlaneProcess(
        h.etcd_config(
            etcd.endpoints, lease_ttl_seconds=60.0, metrics_listen=f"127.0.0.1:{metrics_port}"
        ),
        tmp_path / "cp.log",
    )
    replica.start()
    try:
        await replica.wait_serving()
        watcher = h.SnapshotWatcher(replica.address)
        agent = h.AgentClient(replica.address)
        await agent.connect(h.register("early"))
        before = await watcher.until(h.has("early"))
        assert replica.process is not None
        # The replica freezes; etcd restarts, so its watch connection is gone; changes land
        # and are compacted away while the replica cannot watch. Thawed, it must re-list.
        replica.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.to_thread(etcd.restart)
            async with EtcdStore(etcd.endpoints) as store:
                await store.put(b"/corral/routing/aliases/late", b"")
                revision, _ = await store.get_prefix(b"/corral/routing/aliases/")
            await asyncio.to_thread(etcd.etcdctl, "compact", str(revision))
        finally:
            replica.process.send_signal(signal.SIGCONT)
        after = await watcher.until(lambda s: any(a.name == "late" for a in s.aliases), within=30)
        assert after.version > before.version
        versions = [s.version for s in watcher.snapshots]
        assert versions == sorted(versions)
        text = await asyncio.to_thread(_scrape, metrics_port)
        listings = next(
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("corral_controlplane_store_listings_total ")
        )
        assert listings >= 2, replica.log_tail()
        await agent.close()
        await watcher.close()
    finally:
        replica.kill()


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


async def test_etcd_outage_refuses_writes_and_sends_edges_away_past_the_grace(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd down: writes refused; edges sent on past the grace (a new one first given its state)."""
    monkeypatch.setattr(controlplane.server, "STORE_LOST_GRACE_SECONDS", 0.5)
    async with h.running(h.etcd_config(etcd.endpoints, lease_ttl_seconds=30.0)) as address:
        agent = h.AgentClient(address)
        await agent.connect(h.register("b"))
        watcher = h.SnapshotWatcher(address)
        last = await watcher.until(h.has("b"))
        await asyncio.to_thread(etcd.members[0].stop)
        try:
            await eventually(lambda: _is(address, h.NOT_SERVING), within=30)
            async with h.admin(address) as admin:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await admin.DrainBackend(admin_pb2.DrainBackendRequest(name="b"))
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "state store is unavailable" in (caught.value.details() or "")
                # Reads are served from the replica's view.
                snapshot = (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())).snapshot
                assert snapshot.version == last.version
            # Edges keep what they applied; this replica, which cannot hear of changes, sends
            # them to another rather than keep them. A new edge still gets the last snapshot
            # first (static stability), then is sent on too.
            late = h.SnapshotWatcher(address, edge_id="late")
            for edge in (watcher, late):
                with pytest.raises(AssertionError, match="snapshot stream ended"):
                    await edge.until(lambda s: False, within=10)
                assert edge.error is not None
                assert edge.error.code() == grpc.StatusCode.UNAVAILABLE
                await edge.close()
            got = late.latest
            assert got is not None and h.names(got) == ["b"] and got.version == last.version
        finally:
            await asyncio.to_thread(etcd.members[0].start)
        await eventually(lambda: _is(address, h.SERVING), within=30)
        await agent.report(h.status(health=types_pb2.HEALTH_STATE_DEGRADED))
        back = h.SnapshotWatcher(address, edge_id="back")
        await back.until(lambda s: s.backends[0].status.health == types_pb2.HEALTH_STATE_DEGRADED)
        await agent.close()
        await back.close()
