"""Control-plane replicas over one real etcd agree: the same state by the same version across
restarts and replicas, subscribers switching replicas never go back, a version from another
cluster gets the current snapshot; a drain and configured aliases outlive restarts.
"""

from __future__ import annotations

import asyncio

import grpc

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
