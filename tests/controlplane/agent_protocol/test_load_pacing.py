"""The agent protocol against one replica (in-memory store) over real gRPC: load reports.

Load-only changes are deferred (small ones dropped) and flushed after the interval; health
changes reach edges at once while load-only changes are paced.
"""

from __future__ import annotations

from corral.v1 import admin_pb2, types_pb2
from tests.controlplane import harness as h
from tests.controlplane.agent_protocol.support import _barrier
from tests.support.net import eventually


async def test_load_only_changes_are_deferred_and_small_ones_dropped() -> None:
    """Load-only reports inside the write interval wait; a health change carries the latest."""
    async with h.running(h.config(load_write_interval_seconds=60.0)) as address:
        agent = h.AgentClient(address)
        await agent.connect(h.register("b", first_status=h.status(running=0, kv=0.40)))
        for running in range(1, 21):
            await agent.report(h.status(running=running, kv=0.40))
        await agent.report(h.status(running=20, kv=0.42))
        await _barrier(address)
        async with h.admin(address) as admin:
            held = (await admin.GetBackend(admin_pb2.GetBackendRequest(name="b"))).backend
            # None of the 21 load-only reports was written within the 60 s interval.
            assert held.status.load.running == 0
            await agent.report(
                h.status(running=20, kv=0.42, health=types_pb2.HEALTH_STATE_DEGRADED)
            )
            await _barrier(address)
            held = (await admin.GetBackend(admin_pb2.GetBackendRequest(name="b"))).backend
        assert held.status.health == types_pb2.HEALTH_STATE_DEGRADED
        assert (held.status.load.running, held.status.load.kv_cache_usage) == (20, 0.42)
        await agent.close()


async def test_deferred_load_is_flushed_after_the_interval(
    cp: str, watcher: h.SnapshotWatcher
) -> None:
    """A meaningful load change inside the interval still reaches edges once it is up."""
    agent = h.AgentClient(cp)
    await agent.connect(h.register("b"))
    for running in (1, 2, 3):
        await agent.report(h.status(running=running))
    await watcher.until(lambda s: bool(s.backends) and s.backends[0].status.load.running == 3)
    await agent.close()


async def test_health_changes_reach_edges_at_once_and_load_only_changes_are_paced() -> None:
    """Load-only changes wait out a long load interval; health changes go at once, newest load."""
    cfg = h.config(snapshot_load_interval_seconds=3600.0, load_write_interval_seconds=0.0)
    async with h.running(cfg) as address:
        watcher = h.SnapshotWatcher(address)
        agent = h.AgentClient(address)
        await agent.connect(h.register("b", first_status=h.status(running=0)))
        await watcher.until(h.has("b"))
        await agent.report(h.status(running=7))
        async with h.admin(address) as admin:

            async def view_has_load() -> bool:
                got = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())
                return any(b.status.load.running == 7 for b in got.snapshot.backends)

            await eventually(view_has_load)
            # Any routing write (an alias) is pushed at once, with everything before it.
            await _barrier(address)
        await watcher.until(lambda s: any(a.name == "barrier" for a in s.aliases))
        await agent.report(h.status(running=8))
        await agent.report(h.status(running=8, health=types_pb2.HEALTH_STATE_UNHEALTHY))
        down = await watcher.until(
            lambda s: (
                bool(s.backends) and s.backends[0].status.health != types_pb2.HEALTH_STATE_HEALTHY
            )
        )
        assert down.backends[0].status.load.running == 8
        # No snapshot ever carried a load-only change on its own.
        for snapshot in watcher.snapshots:
            if (
                snapshot.backends
                and snapshot.backends[0].status.health == types_pb2.HEALTH_STATE_HEALTHY
            ):
                assert snapshot.backends[0].status.load.running in (0, 7)
                if snapshot.backends[0].status.load.running == 7:
                    assert any(a.name == "barrier" for a in snapshot.aliases)
        await agent.close()
        await watcher.close()
