"""Control-plane replicas over one real etcd: convergence, moving between replicas, failures."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc
import pytest

from controlplane.store import EtcdStore
from corral.config import ModelAliasConfig
from corral.v1 import admin_pb2, types_pb2
from tests.controlplane import harness as h
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually


def _content(snapshot: types_pb2.Snapshot) -> types_pb2.Snapshot:
    """The snapshot without its (informational) build time."""
    copy = types_pb2.Snapshot()
    copy.CopyFrom(snapshot)
    copy.created_unix_ms = 0
    return copy


async def test_killed_agent_leaves_every_replica_within_the_ttl(etcd: EtcdCluster) -> None:
    """An agent stream cut on replica A: both A's and B's snapshots lose the backend."""
    async with (
        h.running(h.etcd_config(etcd.endpoints)) as a,
        h.running(h.etcd_config(etcd.endpoints)) as b,
    ):
        on_a, on_b = h.SnapshotWatcher(a), h.SnapshotWatcher(b)
        agent = h.AgentClient(a)
        await agent.connect(h.register("gpu-a"))
        await on_a.until(h.has("gpu-a"))
        await on_b.until(h.has("gpu-a"))
        await agent.kill()
        await on_a.until(h.lacks("gpu-a"), within=10)
        await on_b.until(h.lacks("gpu-a"), within=10)
        await on_a.close()
        await on_b.close()


# etcd checks lease expiry every 500 ms; the snapshot then reaches the watcher.
EXPIRY_SLACK = 1.5


async def test_a_silent_agent_leaves_within_the_ttl_of_its_last_message(
    etcd: EtcdCluster,
) -> None:
    """An agent gone quiet with its stream open (host cut off): gone a TTL after its last word."""
    ttl = 3.0
    async with h.running(h.etcd_config(etcd.endpoints, lease_ttl_seconds=ttl)) as a:
        watcher = h.SnapshotWatcher(a)
        agent = h.AgentClient(a)
        await agent.connect(h.register("quiet"))
        await watcher.until(h.has("quiet"))
        # Heartbeats for longer than the TTL keep it; then it falls silent.
        for _ in range(4):
            await agent.report(h.status())
            await asyncio.sleep(1.0)  # the agent's pace
        await agent.stop_heartbeat()
        await agent.report(h.status())
        last_word = agent.last_ack_at
        assert last_word is not None
        await watcher.until(h.lacks("quiet"), within=15)
        left_after = asyncio.get_running_loop().time() - last_word
        # Kept alive until the stream is declared silent, then left to expire, it would
        # take silence + TTL (over 5 s here).
        assert left_after < ttl + EXPIRY_SLACK, left_after
        await agent.close()
        await watcher.close()


async def test_a_restarted_replica_names_the_same_state_by_the_same_version(
    etcd: EtcdCluster,
) -> None:
    """A replica started after deletes and presence writes serves the identical snapshot."""
    async with h.running(h.etcd_config(etcd.endpoints)) as a:
        on_a = h.SnapshotWatcher(a, edge_id="edge-one")
        staying, leaving = h.AgentClient(a), h.AgentClient(a)
        await staying.connect(h.register("staying"))
        await leaving.connect(h.register("leaving"))
        await on_a.until(h.has("leaving"))
        assert await leaving.goodbye() == grpc.StatusCode.OK
        settled = await on_a.until(lambda s: h.names(s) == ["staying"])
        # Presence writes (edges subscribing, agents heartbeating) after the last change.
        second = h.SnapshotWatcher(a, edge_id="edge-two")
        await second.until(lambda s: True)
        async with h.admin(a) as admin:

            async def both_edges_recorded() -> bool:
                edges = await admin.ListEdges(admin_pb2.ListEdgesRequest())
                return {e.edge_id for e in edges.edges} >= {"edge-one", "edge-two"}

            await eventually(both_edges_recorded, within=10)
        assert on_a.latest is not None and on_a.latest.version == settled.version
        async with h.running(h.etcd_config(etcd.endpoints)) as b:
            on_b = h.SnapshotWatcher(b, edge_id="edge-three")
            first = await on_b.until(lambda s: True)
            assert _content(first) == _content(settled)
            await on_b.close()
        assert on_a.latest.version == settled.version
        await staying.close()
        for watcher in (on_a, second):
            await watcher.close()


async def test_two_replicas_stream_identical_versions_and_content(etcd: EtcdCluster) -> None:
    """Whatever each subscriber sees, a version means the same snapshot on both replicas."""
    async with (
        h.running(h.etcd_config(etcd.endpoints)) as a,
        h.running(h.etcd_config(etcd.endpoints)) as b,
    ):
        on_a, on_b = h.SnapshotWatcher(a), h.SnapshotWatcher(b)
        await on_a.until(lambda s: True)
        await on_b.until(lambda s: True)
        agents = []
        for i, replica in enumerate((a, b, a)):
            agent = h.AgentClient(replica)
            await agent.connect(h.register(f"backend-{i}"))
            agents.append(agent)
        await agents[1].report(h.status(health=types_pb2.HEALTH_STATE_DEGRADED))
        async with h.admin(b) as admin:
            await admin.DrainBackend(admin_pb2.DrainBackendRequest(name="backend-0"))
            await admin.SetAlias(
                admin_pb2.SetAliasRequest(alias=types_pb2.ModelAlias(name="x", targets=[h.MODEL]))
            )
        assert await agents[2].goodbye() == grpc.StatusCode.OK
        final = await on_a.until(
            lambda s: h.names(s) == ["backend-0", "backend-1"] and bool(s.aliases)
        )
        same = await on_b.until(lambda s: s.version == final.version)
        assert _content(same) == _content(final)
        assert final.backends[0].drained
        assert final.backends[1].status.health == types_pb2.HEALTH_STATE_DEGRADED
        by_version = {s.version: _content(s) for s in on_a.snapshots}
        common = [s for s in on_b.snapshots if s.version in by_version]
        assert len(common) >= 2
        for snapshot in common:
            assert _content(snapshot) == by_version[snapshot.version]
        for agent in agents[:2]:
            await agent.close()
        await on_a.close()
        await on_b.close()


async def test_subscriber_switching_replicas_never_goes_back(etcd: EtcdCluster) -> None:
    """An edge hopping between replicas with its last applied version only moves forward."""
    async with (
        h.running(h.etcd_config(etcd.endpoints)) as a,
        h.running(h.etcd_config(etcd.endpoints)) as b,
    ):
        agent = h.AgentClient(a)
        await agent.connect(h.register("flappy"))
        applied, cluster = 0, ""
        seen: list[int] = []
        healths = (types_pb2.HEALTH_STATE_HEALTHY, types_pb2.HEALTH_STATE_DEGRADED)
        for i in range(12):
            # Changes keep landing on A while the edge moves; B may lag behind them.
            await agent.report(h.status(health=healths[i % 2], reason=f"step {i}"))
            target = (a, b)[i % 2]
            watcher = h.SnapshotWatcher(
                target, last_applied_version=applied, cluster_id=cluster, edge_id="hopper"
            )
            first = await watcher.until(lambda s: True)
            await watcher.close()
            assert first.version >= applied, (first.version, applied)
            applied, cluster = first.version, first.cluster_id
            seen.append(applied)
        assert seen == sorted(seen)
        assert seen[-1] > seen[0]
        await agent.close()


async def test_version_from_another_cluster_gets_the_current_snapshot(etcd: EtcdCluster) -> None:
    """A last_applied_version from another cluster id is not a floor: current is sent."""
    async with h.running(h.etcd_config(etcd.endpoints)) as address:
        watcher = h.SnapshotWatcher(address, last_applied_version=10**9, cluster_id="elsewhere")
        snapshot = await watcher.until(lambda s: True)
        assert snapshot.cluster_id != "elsewhere"
        assert snapshot.version < 10**9
        await watcher.close()


async def test_agent_resumes_on_another_replica_after_its_replica_is_killed(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Replica A is SIGKILLed; its agent resumes on B and its backend never leaves routing."""
    replica_a = h.ControlPlaneProcess(
        h.etcd_config(etcd.endpoints, lease_ttl_seconds=3.0, replica_id="A"), tmp_path / "a.log"
    )
    replica_a.start()
    try:
        await replica_a.wait_serving()
        async with h.running(h.etcd_config(etcd.endpoints, replica_id="B")) as b:
            on_b = h.SnapshotWatcher(b)
            mover = h.AgentClient(replica_a.address)
            session = await mover.connect(h.register("mover"))
            canary = h.AgentClient(replica_a.address)
            await canary.connect(h.register("canary"))
            await on_b.until(lambda s: h.names(s) == ["canary", "mover"])
            replica_a.kill()
            await asyncio.wait_for(mover.ended, 10)
            resumed_on_b = h.AgentClient(b)
            registered = await resumed_on_b.connect(h.register("mover", resume=session.session_id))
            assert registered.resumed and registered.controlplane_id == "B"
            # The canary was not resumed: once its lease runs out, the mover's would have too.
            await on_b.until(h.lacks("canary"), within=15)
            assert all(h.has("mover")(s) for s in on_b.snapshots if s.backends)
            async with h.admin(b) as admin:
                agents = await admin.ListAgents(admin_pb2.ListAgentsRequest())
            assert [(x.backend_name, x.controlplane_id) for x in agents.agents] == [("mover", "B")]
            await resumed_on_b.close()
            await canary.close()
            await mover.close()
            await on_b.close()
    finally:
        replica_a.kill()


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


async def test_drain_survives_a_control_plane_restart(etcd: EtcdCluster) -> None:
    """A drain flag outlives the replica that set it and the agent's sessions."""
    cfg = h.etcd_config(etcd.endpoints, lease_ttl_seconds=30.0)
    async with h.running(cfg) as address:
        agent = h.AgentClient(address)
        session = await agent.connect(h.register("b"))
        async with h.admin(address) as admin:
            await admin.DrainBackend(admin_pb2.DrainBackendRequest(name="b", reason="disk"))
    # The replica stopped: it told the agent to go elsewhere.
    assert await asyncio.wait_for(agent.ended, 10) == grpc.StatusCode.UNAVAILABLE
    async with h.running(cfg) as address:
        again = h.AgentClient(address)
        registered = await again.connect(h.register("b", resume=session.session_id))
        assert registered.resumed and registered.drained
        watcher = h.SnapshotWatcher(address)
        snapshot = await watcher.until(h.has("b"))
        assert snapshot.backends[0].drained
        # Even a fresh session (after goodbye) finds the backend drained.
        await again.goodbye()
        fresh = h.AgentClient(address)
        assert (await fresh.connect(h.register("b"))).drained
        await fresh.close()
        await watcher.close()


async def test_configured_aliases_are_seeded_once(etcd: EtcdCluster) -> None:
    """Aliases from config are written on first start and not rewritten on a restart."""
    alias = ModelAliasConfig(name="llama-8b", targets=("llama3.1:8b",))
    cfg = h.etcd_config(etcd.endpoints, aliases=(alias,))
    async with h.running(cfg) as address, h.admin(address) as admin:
        listed = await admin.ListAliases(admin_pb2.ListAliasesRequest())
        assert [a.name for a in listed.aliases] == ["llama-8b"]
    async with EtcdStore(etcd.endpoints) as store:
        first = await store.get(b"/corral/routing/aliases/llama-8b")
    async with h.running(cfg):
        pass
    async with EtcdStore(etcd.endpoints) as store:
        second = await store.get(b"/corral/routing/aliases/llama-8b")
    assert first is not None and second is not None
    assert second.mod_revision == first.mod_revision


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


async def test_etcd_outage_keeps_snapshots_flowing_and_refuses_writes(etcd: EtcdCluster) -> None:
    """With etcd down: NOT_SERVING, writes UNAVAILABLE with a message, edges still served."""
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
            # A new edge still gets the last snapshot (static stability).
            late = h.SnapshotWatcher(address, edge_id="late")
            assert h.names(await late.until(lambda s: True)) == ["b"]
            await late.close()
        finally:
            await asyncio.to_thread(etcd.members[0].start)
        await eventually(lambda: _is(address, h.SERVING), within=30)
        await agent.report(h.status(health=types_pb2.HEALTH_STATE_DEGRADED))
        await watcher.until(
            lambda s: s.backends[0].status.health == types_pb2.HEALTH_STATE_DEGRADED
        )
        await agent.close()
        await watcher.close()


async def test_a_session_whose_lease_vanishes_is_ended_at_once(etcd: EtcdCluster) -> None:
    """If the session lease dies under a live stream, the agent is told to register again."""
    async with h.running(h.etcd_config(etcd.endpoints, lease_ttl_seconds=30.0)) as address:
        watcher = h.SnapshotWatcher(address)
        agent = h.AgentClient(address)
        registered = await agent.connect(h.register("b"))
        await watcher.until(h.has("b"))
        # As when a lease expires just as its agent resumes it on this replica.
        await asyncio.to_thread(etcd.etcdctl, "lease", "revoke", registered.session_id)
        assert await asyncio.wait_for(agent.ended, 15) == grpc.StatusCode.ABORTED
        assert "register again" in agent.error_details
        await agent.close()
        again = h.AgentClient(address)
        fresh = await again.connect(h.register("b"))
        assert fresh.session_id != registered.session_id
        await watcher.until(h.has("b"))
        await again.close()
        await watcher.close()


async def test_the_real_agent_registers_again_when_its_lease_is_revoked(
    etcd: EtcdCluster,
) -> None:
    """Session lease revoked under a live agent stream: the replica ends the stream, the agent
    registers afresh, and its backend is back in snapshots under a new session."""
    import agent
    from corral.config import AgentConfig
    from tests.fakes import FakeServer

    fake = FakeServer(kind="vllm", models=[h.MODEL], name="vllm-a")
    await fake.start()
    # A TTL far longer than the test: only the revoke can end the session.
    cfg = h.etcd_config(etcd.endpoints, lease_ttl_seconds=30.0)
    async with h.running(cfg) as address, h.admin(address) as admin:
        watcher = h.SnapshotWatcher(address)
        agent_config = AgentConfig(
            controlplane=(address,),
            backend=fake.url,
            name="b",
            probe_interval_seconds=0.2,
            probe_timeout_seconds=1.0,
            shutdown_grace_seconds=2.0,
        )
        ready = asyncio.Event()
        task = asyncio.create_task(agent.serve(agent_config, ready=ready))

        async def session() -> str | None:
            listed = await admin.ListAgents(admin_pb2.ListAgentsRequest())
            return next((a.session_id for a in listed.agents if a.backend_name == "b"), None)

        try:
            await watcher.until(h.has("b"))
            first = await eventually(session)
            await asyncio.to_thread(etcd.etcdctl, "lease", "revoke", first)

            async def replaced() -> str | None:
                current = await session()
                return current if current not in (None, first) else None

            second = await eventually(replaced, within=15)
            assert int(second, 16) != int(first, 16)
            await watcher.until(h.has("b"))
            backend = (await admin.GetBackend(admin_pb2.GetBackendRequest(name="b"))).backend
            assert backend.spec.url == fake.url
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await watcher.close()
            await fake.stop()
