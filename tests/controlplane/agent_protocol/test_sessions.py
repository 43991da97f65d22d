"""The agent protocol against one replica (in-memory store) over real gRPC: sessions.

Goodbye removes a backend at once and a broken stream lets it lapse; resuming, on the same
replica or after expiry; heartbeats, silence and a heartbeat too slow for the TTL; drain
commands; the maximum connection age; a session whose lease is gone.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from controlplane.agents import AgentHub, SessionSettings
from controlplane.errors import ControlPlaneError, SessionLostError
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics
from controlplane.store.memory import MemoryStore
from corral.v1 import admin_pb2, agent_pb2, types_pb2
from tests.controlplane import harness as h


async def test_goodbye_removes_the_backend_at_once() -> None:
    """Goodbye revokes the session: the backend leaves long before a (60 s) TTL could."""
    async with h.running(h.config(lease_ttl_seconds=60.0)) as address:
        watcher = h.SnapshotWatcher(address)
        agent = h.AgentClient(address)
        await agent.connect(h.register("b"))
        await watcher.until(h.has("b"))
        assert await agent.goodbye() == grpc.StatusCode.OK
        await watcher.until(h.lacks("b"), within=10)
        async with h.admin(address) as admin:
            agents = await admin.ListAgents(admin_pb2.ListAgentsRequest())
        assert list(agents.agents) == []
        await watcher.close()


async def test_broken_stream_lets_the_backend_lapse(cp: str, watcher: h.SnapshotWatcher) -> None:
    """A stream cut without goodbye: the backend leaves when its 3 s lease runs out."""
    agent = h.AgentClient(cp)
    await agent.connect(h.register("b"))
    await watcher.until(h.has("b"))
    await agent.kill()
    await watcher.until(h.lacks("b"), within=10)


async def test_resume_on_the_same_replica_keeps_the_backend() -> None:
    """A reconnect with resume_session_id takes the lease over: no snapshot lacks the backend."""
    async with h.running(h.config(lease_ttl_seconds=30.0)) as address:
        watcher = h.SnapshotWatcher(address)
        first = h.AgentClient(address)
        registered = await first.connect(h.register("b"))
        await watcher.until(h.has("b"))
        await first.kill()
        second = h.AgentClient(address)
        again = await second.connect(h.register("b", resume=registered.session_id))
        assert again.resumed
        assert again.session_id == registered.session_id
        await second.report(h.status(health=types_pb2.HEALTH_STATE_DEGRADED))
        await watcher.until(
            lambda s: (
                bool(s.backends) and s.backends[0].status.health == types_pb2.HEALTH_STATE_DEGRADED
            )
        )
        assert all(h.has("b")(s) for s in watcher.snapshots if s.version > 1)
        await second.goodbye()
        await watcher.until(h.lacks("b"))
        await watcher.close()


async def test_resume_of_an_expired_session_starts_a_new_one(cp: str) -> None:
    """A resume id whose lease is gone (or garbage) just gets a fresh session."""
    agent = h.AgentClient(cp)
    registered = await agent.connect(h.register("b", resume="deadbeef"))
    assert not registered.resumed
    assert registered.session_id != "deadbeef"
    await agent.close()


async def test_drain_commands_reach_the_agent_and_persist_in_registered(cp: str) -> None:
    """Drain/undrain send commands to the backend's agent; re-registering reports drained."""
    agent = h.AgentClient(cp)
    registered = await agent.connect(h.register("b"))
    async with h.admin(cp) as admin:
        drained = await admin.DrainBackend(
            admin_pb2.DrainBackendRequest(name="b", reason="maintenance")
        )
        assert drained.backend.drained
        command = await asyncio.wait_for(agent.commands.get(), 10)
        assert (command.type, command.reason) == (agent_pb2.COMMAND_TYPE_DRAIN, "maintenance")

        await agent.kill()
        again = h.AgentClient(cp)
        resumed = await again.connect(h.register("b", resume=registered.session_id))
        assert resumed.drained

        undrained = await admin.UndrainBackend(admin_pb2.UndrainBackendRequest(name="b"))
        assert not undrained.backend.drained
        command = await asyncio.wait_for(again.commands.get(), 10)
        assert command.type == agent_pb2.COMMAND_TYPE_UNDRAIN
        await again.close()


async def test_silent_agent_is_cut_off() -> None:
    """An agent that sends nothing for two heartbeats loses its stream (DEADLINE_EXCEEDED)."""
    async with h.running(h.config()) as address:
        agent = h.AgentClient(address, heartbeat=False)
        await agent.connect(h.register("quiet"))
        assert await asyncio.wait_for(agent.ended, 15) == grpc.StatusCode.DEADLINE_EXCEEDED
        await agent.close()


async def test_heartbeats_keep_the_session_and_silence_lets_it_lapse(
    cp: str, watcher: h.SnapshotWatcher
) -> None:
    """A heartbeating agent outlives its TTL many times over; once silent, it lapses."""
    agent = h.AgentClient(cp)
    await agent.connect(h.register("b"))
    await watcher.until(h.has("b"))
    lapsed = asyncio.ensure_future(watcher.until(h.lacks("b"), within=2 * 3.0))
    # Two TTLs of heartbeats: the backend never left.
    with pytest.raises(TimeoutError):
        await lapsed
    await agent.stop_heartbeat()
    await watcher.until(h.lacks("b"), within=15)
    await agent.close()


async def test_too_slow_a_heartbeat_for_the_ttl_is_refused_at_start() -> None:
    """heartbeat_interval_seconds above a third of lease_ttl_seconds: a clear startup error."""
    with pytest.raises(ControlPlaneError, match="at most a third of lease_ttl_seconds"):
        async with h.running(h.config(heartbeat_interval_seconds=2.0, lease_ttl_seconds=5.0)):
            pass


async def test_max_connection_age_moves_streams_without_losing_the_backend() -> None:
    """An aged-out connection ends the agent's stream; resuming keeps the backend in routing."""
    cfg = h.config(
        lease_ttl_seconds=30.0,
        max_connection_age_seconds=1.0,
        max_connection_age_grace_seconds=0.5,
    )
    async with h.running(cfg) as address:
        watcher = h.SnapshotWatcher(address)
        agent = h.AgentClient(address)
        registered = await agent.connect(h.register("b"))
        await watcher.until(h.has("b"))
        # The server closes the old connection after its age and grace; the stream ends.
        assert await asyncio.wait_for(agent.ended, 20) != grpc.StatusCode.OK
        await agent.close()
        again = h.AgentClient(address)
        resumed = await again.connect(h.register("b", resume=registered.session_id))
        assert resumed.resumed
        seen = [s for s in watcher.snapshots if s.version > 1]
        assert seen and all(h.has("b")(s) for s in seen)
        await again.goodbye()
        await watcher.close()


async def test_a_refresh_that_finds_the_session_lease_gone_ends_the_session() -> None:
    """Refresh path only: a lease found gone ends that session alone, SessionLostError (ABORTED)."""
    store = MemoryStore()
    hub = AgentHub(
        store,
        KeyLayout.from_prefix("/corral/"),
        SessionSettings(
            replica_id="r", lease_ttl=30, heartbeat_interval=1.0, load_write_interval=0.0
        ),
        Metrics(),
    )
    store.set_lease_lost_listener(hub.on_lease_lost)
    doomed, other = hub.session("peer-a"), hub.session("peer-b")
    await doomed.register(h.register("a"))
    await other.register(h.register("b"))
    await store.revoke_lease(doomed.lease)
    doomed.touch()  # the agent's next message
    other.touch()
    await asyncio.wait_for(doomed.stopped.wait(), 10)
    assert isinstance(doomed.stop_error, SessionLostError)
    assert doomed.stop_error.code == grpc.StatusCode.ABORTED
    assert "register again" in str(doomed.stop_error)
    assert not other.stopped.is_set()
    await store.close()
