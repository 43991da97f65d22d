"""`corral status` against a real control plane (in-memory store) over real gRPC: a backend
registered by an agent stream and an edge watching snapshots show up in the table and the JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from corral.status import ClusterStatus, fetch, run_status
from corral.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
    types_pb2,
)
from tests.status.support import (
    ADMIN_TOKEN,
    AGENT_TOKEN,
    EDGE_TOKEN,
    REPLICA,
    ControlPlane,
    _args,
    _token_file,
)
from tests.support.net import eventually


def _spec() -> types_pb2.BackendSpec:
    return types_pb2.BackendSpec(
        name="gpu-box-vllm",
        url="http://127.0.0.1:8000",
        type=types_pb2.BACKEND_TYPE_VLLM,
        priority=5,
        weight=2.0,
        max_concurrency=16,
        labels={"zone": "lab"},
    )


def _status() -> types_pb2.BackendStatus:
    return types_pb2.BackendStatus(
        health=types_pb2.HEALTH_STATE_HEALTHY,
        reason="probe /health: ok",
        models=[types_pb2.ModelInfo(id="meta-llama/Llama-3.1-8B-Instruct", loaded=True)],
        load=types_pb2.BackendLoad(running=2, waiting=1, kv_cache_usage=0.4),
    )


@contextlib.asynccontextmanager
async def agent_stream(address: str) -> AsyncIterator[agent_pb2.Registered]:
    """An agent's Connect stream: Register, hold the stream open, Goodbye on exit."""
    outbox: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[agent_pb2.ConnectRequest]:
        while (message := await outbox.get()) is not None:
            yield message

    async with grpc.aio.insecure_channel(address) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(
            requests(), metadata=(("authorization", f"Bearer {AGENT_TOKEN}"),)
        )
        outbox.put_nowait(
            agent_pb2.ConnectRequest(
                register=agent_pb2.Register(
                    agent_id="agent-on-gpu-box",
                    backend=_spec(),
                    agent_version="test",
                    status=_status(),
                )
            )
        )
        first = await call.read()
        assert first.WhichOneof("message") == "registered", first
        try:
            yield first.registered
        finally:
            outbox.put_nowait(agent_pb2.ConnectRequest(goodbye=agent_pb2.Goodbye(reason="done")))
            outbox.put_nowait(None)
            while await call.read() is not grpc.aio.EOF:
                pass


@contextlib.asynccontextmanager
async def edge_stream(address: str) -> AsyncIterator[types_pb2.Snapshot]:
    """An edge's WatchSnapshots stream, open until exit; yields the first snapshot."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = routing_pb2_grpc.RoutingServiceStub(channel).WatchSnapshots(
            routing_pb2.WatchSnapshotsRequest(
                edge_id="edge-under-test", listen_address="10.1.2.3:7700"
            ),
            metadata=(("authorization", f"Bearer {EDGE_TOKEN}"),),
        )
        first = await call.read()
        assert first is not grpc.aio.EOF
        try:
            yield first.snapshot
        finally:
            call.cancel()


async def _wait_registered(address: str) -> ClusterStatus:
    def check() -> ClusterStatus | None:
        status = fetch(address, ADMIN_TOKEN)
        return status if status.backends and status.edges else None

    return await eventually(lambda: asyncio.to_thread(check))  # eventually() is untyped


async def test_status_table_shows_backend_and_edge(
    controlplane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table shows the backend (state, models, load, priority, drain) and the edge."""
    token_file = _token_file(tmp_path, ADMIN_TOKEN)
    async with agent_stream(controlplane.address), edge_stream(controlplane.address):
        seen = await _wait_registered(controlplane.address)
        capsys.readouterr()
        rc = await asyncio.to_thread(
            run_status, _args(controlplane.address, token_file, as_json=False)
        )
        out = capsys.readouterr().out
        assert rc == 0
        assert f"snapshot version {seen.version}" in out
        row = next(line for line in out.splitlines() if line.startswith("gpu-box-vllm"))
        assert row.split() == [
            "gpu-box-vllm",
            "vllm",
            "healthy",
            "meta-llama/Llama-3.1-8B-Instruct*",
            "2/1/40%",
            "5",
            "2",
            "no",
            "agent-on-gpu-box",
        ]
        edge_row = next(line for line in out.splitlines() if line.startswith("edge-under-test"))
        assert edge_row.split()[:2] == ["edge-under-test", "10.1.2.3:7700"]
        assert REPLICA in edge_row.split()

        # An operator drains the backend; status shows it.
        async with grpc.aio.insecure_channel(controlplane.address) as channel:
            await admin_pb2_grpc.AdminServiceStub(channel).DrainBackend(
                admin_pb2.DrainBackendRequest(name="gpu-box-vllm", reason="maintenance"),
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            )
        await eventually(
            lambda: asyncio.to_thread(
                lambda: fetch(controlplane.address, ADMIN_TOKEN).backends[0].drained
            )
        )
        capsys.readouterr()
        rc = await asyncio.to_thread(
            run_status, _args(controlplane.address, token_file, as_json=False)
        )
        row = next(
            line for line in capsys.readouterr().out.splitlines() if line.startswith("gpu-box-vllm")
        )
        assert rc == 0
        assert row.split()[7] == "yes"


async def test_status_json_carries_the_protos(
    controlplane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the backends and edges as protobuf JSON with the snapshot version."""
    token_file = _token_file(tmp_path, ADMIN_TOKEN)
    async with agent_stream(controlplane.address), edge_stream(controlplane.address):
        seen = await _wait_registered(controlplane.address)
        capsys.readouterr()
        rc = await asyncio.to_thread(
            run_status, _args(controlplane.address, token_file, as_json=True)
        )
        doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["version"] == seen.version > 0
    [backend] = doc["backends"]
    assert backend["spec"]["name"] == "gpu-box-vllm"
    assert backend["spec"]["type"] == "BACKEND_TYPE_VLLM"
    assert backend["spec"]["labels"] == {"zone": "lab"}
    assert backend["status"]["health"] == "HEALTH_STATE_HEALTHY"
    assert backend["status"]["load"] == {"running": 2, "waiting": 1, "kvCacheUsage": 0.4}
    assert backend["agentId"] == "agent-on-gpu-box"
    [edge] = doc["edges"]
    assert edge["edgeId"] == "edge-under-test"
    assert edge["listenAddress"] == "10.1.2.3:7700"
