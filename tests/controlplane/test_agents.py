"""The agent protocol against one replica (in-memory store) over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from controlplane.agents import AgentHub, SessionSettings
from controlplane.errors import ControlPlaneError, SessionLostError
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics
from controlplane.store.memory import MemoryStore
from corral.v1 import admin_pb2, agent_pb2, types_pb2
from tests.controlplane import harness as h
from tests.support.net import eventually


@pytest.fixture
async def cp() -> AsyncIterator[str]:
    """One replica with an in-memory store, a 3 s lease TTL and a 1 s heartbeat."""
    async with h.running(h.config()) as address:
        yield address


@pytest.fixture
async def watcher(cp: str) -> AsyncIterator[h.SnapshotWatcher]:
    w = h.SnapshotWatcher(cp)
    try:
        yield w
    finally:
        await w.close()


async def _barrier(address: str) -> None:
    """An admin write that returns once this replica's view holds every earlier write."""
    async with h.admin(address) as admin:
        await admin.SetAlias(
            admin_pb2.SetAliasRequest(alias=types_pb2.ModelAlias(name="barrier", targets=["x"]))
        )


async def test_registered_backend_appears_with_its_spec_and_status(
    cp: str, watcher: h.SnapshotWatcher
) -> None:
    """Register puts the backend, its spec, first status and agent id into snapshots."""
    agent = h.AgentClient(cp)
    registered = await agent.connect(
        h.register("gpu-a", first_status=h.status(running=2, waiting=1, kv=0.25))
    )
    assert registered.session_id and not registered.resumed and not registered.drained
    assert registered.lease_ttl_seconds == 3
    assert registered.heartbeat_interval_seconds == 1
    snapshot = await watcher.until(h.has("gpu-a"))
    [backend] = snapshot.backends
    assert backend.spec.type == types_pb2.BACKEND_TYPE_VLLM
    assert backend.agent_id == "agent-gpu-a"
    assert backend.status.health == types_pb2.HEALTH_STATE_HEALTHY
    assert (backend.status.load.running, backend.status.load.kv_cache_usage) == (2, 0.25)
    await agent.close()


async def test_snapshots_are_sorted_and_versions_only_grow(
    cp: str, watcher: h.SnapshotWatcher
) -> None:
    """Backends come sorted by name; every snapshot a subscriber gets is newer."""
    agents = []
    for name in ("zeta", "alpha", "mid"):
        agent = h.AgentClient(cp)
        await agent.connect(h.register(name))
        agents.append(agent)
    snapshot = await watcher.until(lambda s: len(s.backends) == 3)
    assert h.names(snapshot) == ["alpha", "mid", "zeta"]
    versions = [s.version for s in watcher.snapshots]
    assert versions == sorted(set(versions))
    for agent in agents:
        await agent.close()


async def test_health_change_reaches_snapshots(cp: str, watcher: h.SnapshotWatcher) -> None:
    """A report with a new health state is written at once."""
    agent = h.AgentClient(cp)
    await agent.connect(h.register("b"))
    await watcher.until(h.has("b"))
    ack = await agent.report(h.status(health=types_pb2.HEALTH_STATE_UNHEALTHY, reason="down"))
    assert ack.seq == 1
    snapshot = await watcher.until(
        lambda s: s.backends[0].status.health == types_pb2.HEALTH_STATE_UNHEALTHY
    )
    assert snapshot.backends[0].status.reason == "down"
    await agent.close()


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


async def test_duplicate_name_from_another_agent_is_already_exists(cp: str) -> None:
    """A second agent cannot take a live backend's name; the first keeps working."""
    first = h.AgentClient(cp)
    await first.connect(h.register("shared", agent_id="agent-one"))
    second = h.AgentClient(cp)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.connect(h.register("shared", agent_id="agent-two"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "agent-one" in (caught.value.details() or "")
    assert (await first.report(h.status(running=1))).seq == 1
    await first.close()
    await second.close()


async def test_same_agent_registering_again_takes_over_its_own_name(
    cp: str, watcher: h.SnapshotWatcher
) -> None:
    """An agent restarted without its session id reclaims its backend instead of waiting."""
    first = h.AgentClient(cp)
    await first.connect(h.register("b", agent_id="host:1"))
    second = h.AgentClient(cp)
    registered = await second.connect(
        h.register("b", agent_id="host:1", first_status=h.status(models=("new-model",)))
    )
    assert not registered.resumed
    # The old stream is ended by the replica; the backend carries the new status.
    assert await asyncio.wait_for(first.ended, 10) == grpc.StatusCode.ABORTED
    snapshot = await watcher.until(
        lambda s: bool(s.backends) and s.backends[0].status.models[0].id == "new-model"
    )
    assert h.names(snapshot) == ["b"]
    await second.close()


async def test_bad_register_is_invalid_argument_and_others_keep_working(
    cp: str, watcher: h.SnapshotWatcher
) -> None:
    """Malformed registrations are refused with a clear message; a good agent is unharmed."""
    good = h.AgentClient(cp)
    await good.connect(h.register("good"))
    bad_specs = {
        "backend url is empty": h.spec("bad", url=""),
        "must start with http:// or https://": h.spec("bad", url="ftp://10.0.0.1/"),
        "has no host": h.spec("bad", url="http:///v1"),
        "type is unspecified": h.spec("bad", kind=types_pb2.BACKEND_TYPE_UNSPECIFIED),
        "weight -1 is outside": h.spec("bad", weight=-1.0),
        "priority -5 is outside": h.spec("bad", priority=-5),
        "characters outside": h.spec("bad name"),
    }
    for message, bad_spec in bad_specs.items():
        bad = h.AgentClient(cp)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bad.connect(h.register(bad_spec.name, backend=bad_spec))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in (caught.value.details() or ""), caught.value.details()
        await bad.close()
    # Still serving the good agent.
    assert (await good.report(h.status(health=types_pb2.HEALTH_STATE_LOADING))).seq == 1
    snapshot = await watcher.until(
        lambda s: bool(s.backends) and s.backends[0].status.health == types_pb2.HEALTH_STATE_LOADING
    )
    assert h.names(snapshot) == ["good"]
    await good.close()


async def test_oversized_and_malformed_messages_end_only_their_stream(
    cp: str, watcher: h.SnapshotWatcher
) -> None:
    """A >4 MiB register, a report before register and a bad report each end one stream."""
    good = h.AgentClient(cp)
    await good.connect(h.register("good"))

    huge = h.AgentClient(cp)
    big_status = h.status()
    big_status.models[0].metadata["blob"] = "x" * (5 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await huge.connect(h.register("huge", first_status=big_status))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await huge.close()

    raw = h.AgentClient(cp)
    raw.open(agent_pb2.ConnectRequest(report=agent_pb2.Report(seq=1)))
    assert await asyncio.wait_for(raw.ended, 10) == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message" in raw.error_details
    await raw.close()

    bad_report = h.AgentClient(cp)
    await bad_report.connect(h.register("bad-report"))
    bad_status = h.status()
    bad_status.load.kv_cache_usage = 7.0
    bad_report.send(agent_pb2.ConnectRequest(report=agent_pb2.Report(seq=1, status=bad_status)))
    assert await asyncio.wait_for(bad_report.ended, 10) == grpc.StatusCode.INVALID_ARGUMENT
    assert "kv_cache_usage" in bad_report.error_details
    await bad_report.close()

    assert (await good.report(h.status(running=4))).seq == 1
    await _barrier(cp)
    async with h.admin(cp) as admin:
        backend = (await admin.GetBackend(admin_pb2.GetBackendRequest(name="good"))).backend
    assert backend.spec.name == "good"
    await good.close()


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


async def test_agent_presence_lists_the_replica_and_session(cp: str) -> None:
    """ListAgents shows each agent with its session and the replica holding its stream."""
    agent = h.AgentClient(cp)
    registered = await agent.connect(h.register("b"))
    async with h.admin(cp) as admin:
        agents = await eventually(
            lambda: admin.ListAgents(admin_pb2.ListAgentsRequest()), within=10
        )
    [info] = agents.agents
    assert (info.backend_name, info.agent_id) == ("b", "agent-b")
    assert info.session_id == registered.session_id
    assert info.controlplane_id == registered.controlplane_id
    assert info.agent_version == "test"
    await agent.close()


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


async def test_health_changes_reach_edges_at_once_and_load_only_changes_are_paced() -> None:
    """With a long snapshot load interval, a load-only change is held back from subscribers
    (the view has it) while a health change is pushed at once, carrying the newest load."""
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


async def test_a_refresh_that_finds_the_session_lease_gone_ends_the_session() -> None:
    """The refresh path alone (no routing view): an agent message whose lease refresh finds
    the lease gone stops that session with SessionLostError (ABORTED), and no other."""
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
