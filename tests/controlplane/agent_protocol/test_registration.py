"""The agent protocol against one replica (in-memory store) over real gRPC: registering.

A registered backend appears with its spec and status, snapshots are sorted and their versions
only grow, health changes reach them; duplicate names, an agent registering again, bad
registers and oversized or malformed messages; the agents' presence per replica and session.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from corral.v1 import admin_pb2, agent_pb2, types_pb2
from tests.controlplane import harness as h
from tests.controlplane.agent_protocol.support import _barrier
from tests.support.net import eventually


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
