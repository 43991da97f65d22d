"""The agent against real control-plane replicas over a real etcd: it survives a control-plane
restart and moves between two replicas without its backend leaving routing.
"""

from __future__ import annotations

import asyncio
import contextlib

from corral.v1 import routing_pb2, routing_pb2_grpc
from tests.agent.conftest import AgentFactory
from tests.agent.controlplane_replicas import H, ReplicaFactory, _is_present, agent_settings
from tests.support.net import eventually


async def test_survives_controlplane_restart_without_leaving(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """The replica restarts; the agent resumes its session and the backend stays registered."""
    cp = await replicas("cp-a")
    fake = await fake_server("ollama", models=["llama3"], name="ollama-r")
    agent = await start_agent(**agent_settings(cp, fake.url, "ollama-r"))
    await eventually(lambda: _is_present(cp, "ollama-r"))
    session = await eventually(lambda: agent.reporter.session_id)
    await cp.stop()
    await cp.start()
    # Registered again on the restarted replica, on the same (still live) session.
    await eventually(lambda: agent.reporter.sessions >= 2, within=20)
    assert agent.reporter.session_id == session
    backend = await cp.backend("ollama-r")
    assert backend is not None and backend.status.health == H
    # And it keeps reporting there.
    fake.set_load()  # Ollama exposes no load; change a model instead
    fake.unload_model("llama3")

    async def unloaded() -> bool:
        backend = await cp.backend("ollama-r")
        return backend is not None and not backend.status.models[0].loaded

    await eventually(unloaded)


async def test_moves_between_replicas_without_leaving_routing(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """Replica A dies; the agent moves to B over the same etcd; no snapshot ever lacks it."""
    cp_a = await replicas("cp-a")
    cp_b = await replicas("cp-b")
    fake = await fake_server("sglang", models=["qwen"], name="sglang-m")
    agent = await start_agent(**agent_settings([cp_a, cp_b], fake.url, "sglang-m"))
    await eventually(lambda: agent.reporter.controlplane_id == "cp-a")

    snapshots: list[routing_pb2.WatchSnapshotsResponse] = []
    present = asyncio.Event()

    async def watch() -> None:
        stub = routing_pb2_grpc.RoutingServiceStub(cp_b.channel())
        call = stub.WatchSnapshots(routing_pb2.WatchSnapshotsRequest(edge_id="test-watcher"))
        async for response in call:
            snapshots.append(response)
            if any(b.spec.name == "sglang-m" for b in response.snapshot.backends):
                present.set()

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(present.wait(), 15)
        await cp_a.stop()
        await eventually(lambda: agent.reporter.controlplane_id == "cp-b", within=20)
        # After the move the agent's reports are applied through B: change the load.
        fake.set_load(running=5)

        def loaded() -> bool:
            return any(
                b.spec.name == "sglang-m" and b.status.load.running == 5
                for b in snapshots[-1].snapshot.backends
            )

        await eventually(loaded, within=10)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    first = next(
        i
        for i, s in enumerate(snapshots)
        if any(b.spec.name == "sglang-m" for b in s.snapshot.backends)
    )
    for response in snapshots[first:]:
        backends = {b.spec.name: b for b in response.snapshot.backends}
        assert "sglang-m" in backends, (
            f"backend left routing at version {response.snapshot.version}"
        )
        assert backends["sglang-m"].status.health == H
    versions = [s.snapshot.version for s in snapshots]
    assert versions == sorted(versions)
