"""Agents across control-plane replicas over one real etcd: a killed or silent agent leaves every
replica within the lease TTL, an agent resumes on another replica when its own is killed, and a
session whose lease vanishes is ended at once (the real agent registers again).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from corral.v1 import admin_pb2
from tests.controlplane import harness as h
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually


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
        # Still routed after longer than the TTL: the heartbeats kept it (without them it
        # would be gone already, and the bound below would pass on an empty wait).
        assert h.has("quiet")(watcher.latest)
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
            both_seen = len(on_b.snapshots) - 1  # until() returned the latest snapshot
            replica_a.kill()
            await asyncio.wait_for(mover.ended, 10)
            resumed_on_b = h.AgentClient(b)
            registered = await resumed_on_b.connect(h.register("mover", resume=session.session_id))
            assert registered.resumed and registered.controlplane_id == "B"
            # The canary was not resumed: once its lease runs out, the mover's would have too.
            await on_b.until(h.lacks("canary"), within=15)
            assert all(h.has("mover")(s) for s in on_b.snapshots[both_seen:])
            async with h.admin(b) as admin:
                agents = await admin.ListAgents(admin_pb2.ListAgentsRequest())
            assert [(x.backend_name, x.controlplane_id) for x in agents.agents] == [("mover", "B")]
            await resumed_on_b.close()
            await canary.close()
            await mover.close()
            await on_b.close()
    finally:
        replica_a.kill()


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
    """A revoked session lease ends a live agent's stream; it re-registers, its backend returns."""
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
