"""The llama.cpp probe against a real llama-server: router mode, aliases, idle sleep.

The binary and tiny model are the suite's cached build (tests/support/llamacpp_build.py); a
missing build fails, never skips.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.http import BackendClient
from agent.servers import PROBES, ServerProbe
from corral.v1 import types_pb2
from tests.agent.conftest import ClientFactory
from tests.support.llamacpp import LlamaServer, require_built, wait_ready
from tests.support.net import eventually, free_port

H = types_pb2.HEALTH_STATE_HEALTHY
MESSAGES = types_pb2.CAPABILITY_ANTHROPIC_MESSAGES

StartServer = Callable[..., LlamaServer]


@pytest.fixture
def llama_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start llama-servers with the given arguments (one thread, two slots); stop them after."""
    started: list[LlamaServer] = []

    def start(*args: str) -> LlamaServer:
        binary, _ = require_built()
        port = free_port()
        command = [str(binary), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--threads", "1", "--parallel", "2", *args]
        server = LlamaServer(port, tmp_path / f"llama-server-{port}.log", command)
        started.append(server.start())
        wait_ready([server])
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A router's --models-dir with two models, alpha and beta (copies of the tiny model)."""
    _, model = require_built()
    path = tmp_path / "models"
    path.mkdir()
    for name in ("alpha", "beta"):
        shutil.copy(model, path / f"{name}.gguf")
    return path


def _probe(backend_client: ClientFactory, server: LlamaServer) -> tuple[ServerProbe, BackendClient]:
    # Generous limits: a busy machine must not make an answer slow (DEGRADED) or time out.
    client = backend_client(server.url, timeout=10.0)
    return PROBES["llamacpp"](client, slow_seconds=5.0), client


async def _json(client: BackendClient, path: str) -> Any:
    resp = await client.get(path)
    assert resp.ok, resp.describe()
    return resp.json()


async def _states(client: BackendClient) -> dict[str, str]:
    """Each model's state as the router lists it (asking it loads nothing)."""
    data = await _json(client, "/v1/models")
    return {item["id"]: item["status"]["value"] for item in data["data"]}


@contextlib.asynccontextmanager
async def _answering(server: LlamaServer, model: str) -> AsyncIterator[None]:
    """A long streamed answer from model, under way (its first chunk read) inside the block."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 10000,
        "ignore_eos": True,
        "stream": True,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        await resp.content.readline()
        yield


async def test_router_mode_is_healthy_and_loads_no_model(
    llama_server: StartServer, models_dir: Path, backend_client: ClientFactory
) -> None:
    """A router is healthy; load comes from its loaded models' /metrics, never loading others."""
    server = llama_server("--models-dir", str(models_dir), "--metrics")
    probe, client = _probe(backend_client, server)
    for _ in range(3):
        obs = await probe.probe()
        assert (obs.health, obs.reason) == (H, "ok")
    assert {(m.id, m.loaded) for m in obs.models or []} == {("alpha", False), ("beta", False)}
    assert await _states(client) == {"alpha": "unloaded", "beta": "unloaded"}
    async with _answering(server, "alpha"):  # loads alpha and keeps one of its slots busy
        obs = await probe.probe()
        assert (obs.health, obs.reason) == (H, "ok")
        assert {(m.id, m.loaded) for m in obs.models or []} == {("alpha", True), ("beta", False)}
        assert obs.load is not None and (obs.load.running, obs.load.waiting) == (1, 0)
    assert (await _states(client))["beta"] == "unloaded"


async def test_router_without_autoload_offers_only_loaded_models(
    llama_server: StartServer, models_dir: Path, backend_client: ClientFactory
) -> None:
    """With --no-models-autoload, a model is reported once it is loaded, not before."""
    server = llama_server("--models-dir", str(models_dir), "--no-models-autoload")
    probe, client = _probe(backend_client, server)
    obs = await probe.probe()
    assert (obs.health, obs.models) == (H, [])
    loaded = await client.post_json("/models/load", {"model": "alpha"})
    assert loaded.ok, loaded.describe()

    async def reported() -> list[tuple[str, bool]]:
        obs = await probe.probe()
        assert obs.health == H, obs.reason
        return [(m.id, m.loaded) for m in obs.models or []]

    assert await eventually(reported, within=30) == [("alpha", True)]


async def test_every_alias_is_a_model(
    llama_server: StartServer, backend_client: ClientFactory
) -> None:
    """--alias tiny-a,tiny-b: both names are reported, with the same context length and size."""
    _, model = require_built()
    server = llama_server("--model", str(model), "--alias", "tiny-a,tiny-b", "--metrics")
    probe, _ = _probe(backend_client, server)
    obs = await probe.probe()
    assert obs.health == H, obs.reason
    models = {m.id: m for m in obs.models or []}
    assert set(models) == {"tiny-a", "tiny-b"}
    assert models["tiny-a"].context_length > 0 and models["tiny-a"].size_bytes > 0
    for field in ("loaded", "context_length", "size_bytes"):
        assert getattr(models["tiny-b"], field) == getattr(models["tiny-a"], field)


async def test_a_sleeping_server_is_not_woken(
    llama_server: StartServer, backend_client: ClientFactory
) -> None:
    """Asleep (--sleep-idle-seconds), it is probed without /slots or the Messages check."""
    _, model = require_built()
    # No --metrics: load would come from /slots, which wakes the server.
    server = llama_server("--model", str(model), "--sleep-idle-seconds", "2")
    probe, client = _probe(backend_client, server)

    async def sleeping() -> bool:
        return bool((await _json(client, "/props")).get("is_sleeping"))

    await eventually(sleeping, within=30)
    for _ in range(3):
        obs = await probe.probe()
        assert (obs.health, obs.reason) == (H, "ok")
    assert await sleeping()
    assert "exiting sleeping state" not in server.log_path.read_text()
    assert MESSAGES not in probe.capabilities  # not asked while it sleeps
    await client.get("/slots")  # awake again, as a request would make it
    await probe.probe()
    assert MESSAGES in probe.capabilities
