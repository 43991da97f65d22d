"""AdminService calls against one replica (in-memory store), and its Prometheus metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest

from corral.config import ModelAliasConfig
from corral.v1 import admin_pb2, types_pb2
from tests.controlplane import harness as h
from tests.support.net import eventually, free_port


@pytest.fixture
async def cp() -> AsyncIterator[str]:
    cfg = h.config(aliases=(ModelAliasConfig(name="llama-8b", targets=("llama3.1:8b",)),))
    async with h.running(cfg) as address:
        yield address


async def _status_code(call: object) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_models_map_to_backends_and_aliases(cp: str) -> None:
    """ListModels lists each model's backends, and aliases with their targets' backends."""
    ollama = h.AgentClient(cp)
    await ollama.connect(
        h.register(
            "ollama-a",
            backend=h.spec("ollama-a", kind=types_pb2.BACKEND_TYPE_OLLAMA),
            first_status=h.status(models=("llama3.1:8b", "qwen2.5:7b")),
        )
    )
    vllm = h.AgentClient(cp)
    await vllm.connect(h.register("vllm-a", first_status=h.status(models=("meta-llama/L-8B",))))
    async with h.admin(cp) as admin:
        await admin.SetAlias(
            admin_pb2.SetAliasRequest(
                alias=types_pb2.ModelAlias(
                    name="llama-8b", targets=["llama3.1:8b", "meta-llama/L-8B"]
                )
            )
        )
        models = {m.id: m for m in (await admin.ListModels(admin_pb2.ListModelsRequest())).models}
    assert sorted(models) == ["llama-8b", "llama3.1:8b", "meta-llama/L-8B", "qwen2.5:7b"]
    assert list(models["llama3.1:8b"].backends) == ["ollama-a"]
    assert list(models["llama-8b"].backends) == ["ollama-a", "vllm-a"]
    assert list(models["llama-8b"].alias_targets) == ["llama3.1:8b", "meta-llama/L-8B"]
    assert not models["qwen2.5:7b"].alias_targets
    await ollama.close()
    await vllm.close()


async def test_aliases_seeded_set_listed_deleted(cp: str) -> None:
    """Configured aliases are seeded; Set/Delete persist and show in snapshots."""
    watcher = h.SnapshotWatcher(cp)
    async with h.admin(cp) as admin:
        listed = await admin.ListAliases(admin_pb2.ListAliasesRequest())
        assert [(a.name, list(a.targets)) for a in listed.aliases] == [
            ("llama-8b", ["llama3.1:8b"])
        ]
        await admin.SetAlias(
            admin_pb2.SetAliasRequest(alias=types_pb2.ModelAlias(name="gemma", targets=["g:4b"]))
        )
        snapshot = await watcher.until(lambda s: any(a.name == "gemma" for a in s.aliases))
        assert [a.name for a in snapshot.aliases] == ["gemma", "llama-8b"]
        await admin.DeleteAlias(admin_pb2.DeleteAliasRequest(name="gemma"))
        await watcher.until(lambda s: all(a.name != "gemma" for a in s.aliases))
        assert (
            await _status_code(admin.DeleteAlias(admin_pb2.DeleteAliasRequest(name="gemma")))
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await _status_code(
                admin.SetAlias(admin_pb2.SetAliasRequest(alias=types_pb2.ModelAlias(name="x")))
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    await watcher.close()


async def test_unknown_backends_are_not_found_and_bad_names_invalid(cp: str) -> None:
    """Get/Drain/Undrain of an unknown backend: NOT_FOUND; a malformed name: INVALID_ARGUMENT."""
    async with h.admin(cp) as admin:
        for call in (
            admin.GetBackend(admin_pb2.GetBackendRequest(name="nope")),
            admin.DrainBackend(admin_pb2.DrainBackendRequest(name="nope")),
            admin.UndrainBackend(admin_pb2.UndrainBackendRequest(name="nope")),
        ):
            assert await _status_code(call) == grpc.StatusCode.NOT_FOUND
        assert (
            await _status_code(admin.DrainBackend(admin_pb2.DrainBackendRequest(name="../etc")))
            == grpc.StatusCode.INVALID_ARGUMENT
        )


async def test_drain_shows_in_backends_and_snapshot(cp: str) -> None:
    """A drained backend is marked drained everywhere an operator or edge looks."""
    agent = h.AgentClient(cp)
    await agent.connect(h.register("b"))
    watcher = h.SnapshotWatcher(cp)
    async with h.admin(cp) as admin:
        response = await admin.DrainBackend(admin_pb2.DrainBackendRequest(name="b", reason="r"))
        assert response.backend.drained and response.backend.spec.name == "b"
        # Read-your-writes on the same replica.
        got = await admin.GetBackend(admin_pb2.GetBackendRequest(name="b"))
        assert got.backend.drained
        snapshot = (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())).snapshot
        assert snapshot.backends[0].drained
        listed = await admin.ListBackends(admin_pb2.ListBackendsRequest())
        assert listed.version == snapshot.version
        edge_view = await watcher.until(lambda s: s.version >= snapshot.version)
        assert edge_view.backends[0].drained
        # Draining twice is fine and changes nothing.
        again = await admin.DrainBackend(admin_pb2.DrainBackendRequest(name="b", reason="r"))
        assert again.backend.drained
        assert (await admin.GetSnapshot(admin_pb2.GetSnapshotRequest())).snapshot.version == (
            snapshot.version
        )
    await watcher.close()
    await agent.close()


async def test_edges_are_listed_with_their_applied_version(cp: str) -> None:
    """ListEdges shows each subscriber, its listen address and the version it was sent."""
    watcher = h.SnapshotWatcher(cp, edge_id="edge-7")
    first = await watcher.until(lambda s: True)
    async with h.admin(cp) as admin:

        async def recorded() -> admin_pb2.EdgeInfo | None:
            edges = (await admin.ListEdges(admin_pb2.ListEdgesRequest())).edges
            return next((e for e in edges if e.applied_version >= first.version), None)

        edge = await eventually(recorded, within=10)
    assert (edge.edge_id, edge.listen_address) == ("edge-7", "127.0.0.1:7700")
    await watcher.close()
    async with h.admin(cp) as admin:

        async def gone() -> bool:
            return not (await admin.ListEdges(admin_pb2.ListEdgesRequest())).edges

        await eventually(gone, within=10)


async def test_metrics_endpoint_counts_agents_edges_and_writes() -> None:
    """/metrics (own registry) shows connected agents and edges, version, writes, rejections."""
    metrics_port = free_port()
    cfg = h.config(metrics_listen=f"127.0.0.1:{metrics_port}")
    async with h.running(cfg) as address:
        # No heartbeats: exactly one report is counted.
        agent = h.AgentClient(address, heartbeat=False)
        await agent.connect(h.register("b"))
        watcher = h.SnapshotWatcher(address)
        snapshot = await watcher.until(h.has("b"))
        bad = h.AgentClient(address)
        with pytest.raises(grpc.aio.AioRpcError):
            await bad.connect(h.register("bad", backend=h.spec("bad", url="")))
        await agent.report(h.status(health=types_pb2.HEALTH_STATE_DEGRADED))
        async with aiohttp.ClientSession() as session:

            async def scrape() -> str | None:
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                    text = await resp.text()
                return text if "corral_controlplane_reports_total 1.0" in text else None

            text = await eventually(scrape, within=10)
        assert "corral_controlplane_agents_connected 1.0" in text
        assert "corral_controlplane_edges_connected 1.0" in text
        assert 'corral_controlplane_rejections_total{reason="invalid_argument"} 1.0' in text
        assert 'corral_controlplane_store_writes_total{kind="spec"} 1.0' in text
        assert "corral_controlplane_store_synced 1.0" in text
        version_line = next(
            line
            for line in text.splitlines()
            if line.startswith("corral_controlplane_snapshot_version ")
        )
        assert float(version_line.split()[1]) >= snapshot.version
        await bad.close()
        await watcher.close()
        await agent.close()
