"""Detection and per-type probes against fakes of every inference server (no control plane)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from agent.detect import detect
from agent.servers import PROBES
from corral.v1 import types_pb2
from tests.agent.conftest import ClientFactory
from tests.fakes import KINDS, FakeModel
from tests.support.net import free_port

H = types_pb2.HEALTH_STATE_HEALTHY
D = types_pb2.HEALTH_STATE_DEGRADED
L = types_pb2.HEALTH_STATE_LOADING
U = types_pb2.HEALTH_STATE_UNHEALTHY

# What each kind's own API tells beyond its model list.
NO_CONTEXT = ("openai", "lmdeploy", "docker-model-runner", "lemonade", "vllm-mlx", "triton")
RUNNING_WAITING = ("vllm", "sglang", "llamacpp", "lmdeploy", "tgi", "nim")
KV_CACHE = ("vllm", "sglang", "lmdeploy", "nim")
MESSAGES_NATIVE = ("vllm", "ollama", "vllm-mlx")
VERSIONED = ("ollama", "vllm", "sglang", "llamacpp", "litellm", "lemonade", "tgi", "nim")


@pytest.mark.parametrize("kind", KINDS)
async def test_detects_every_kind(kind, fake_server, backend_client: ClientFactory) -> None:
    """--type auto tells each server type apart from its own endpoints."""
    fake = await fake_server(kind, models=["some/model"])
    found = await detect(backend_client(fake.url))
    assert found.server_type == kind, found
    assert found.evidence


async def test_detects_llamacpp_while_loading(fake_server, backend_client: ClientFactory) -> None:
    """A llama.cpp still loading its model (503 "Loading model") is recognised as llama.cpp."""
    fake = await fake_server("llamacpp", models=["m.gguf"])
    fake.mode = "loading"
    found = await detect(backend_client(fake.url))
    assert found.server_type == "llamacpp"
    assert "loading" in found.evidence.lower()


async def test_detection_explains_failure(backend_client: ClientFactory) -> None:
    """With nothing listening, detection finds nothing and says why for each probe."""
    from tests.support.net import free_port

    found = await detect(backend_client(f"http://127.0.0.1:{free_port()}"))
    assert found.server_type is None
    assert "connection refused" in found.evidence
    assert any(o.startswith("GET /v1/models") for o in found.outcomes)


@pytest.mark.parametrize("kind", KINDS)
async def test_probe_reads_models_and_load(
    kind, fake_server, backend_client: ClientFactory
) -> None:
    """Each type's probes yield healthy, the served models with context length, and load."""
    models = [FakeModel(id="org/model-a", context_length=16384)]
    fake = await fake_server(kind, models=models, anthropic_native=kind in MESSAGES_NATIVE)
    fake.set_load(running=2, waiting=1, kv_cache_usage=0.4)
    probe = PROBES[kind](backend_client(fake.url), slow_seconds=0.5)
    obs = await probe.probe()
    assert (obs.health, obs.reason) == (H, "ok")
    assert obs.models is not None
    ids = [m.id for m in obs.models]
    assert ids == [fake.models[0].id]
    model = obs.models[0]
    assert model.loaded
    if kind not in NO_CONTEXT:
        assert model.context_length == 16384
    if kind == "ollama":
        assert model.vram_bytes > 0 and model.size_bytes > 0
    assert obs.load is not None
    if kind in RUNNING_WAITING:
        assert (obs.load.running, obs.load.waiting) == (2, 1)
    if kind == "triton":
        assert obs.load.waiting == 1  # Triton's metrics count what waits, not what runs
    if kind in KV_CACHE:
        assert obs.load.kv_cache_usage == pytest.approx(0.4)
    caps = probe.capabilities
    assert (types_pb2.CAPABILITY_ANTHROPIC_MESSAGES in caps) == (kind in MESSAGES_NATIVE)
    if kind in VERSIONED:
        assert probe.server_version.startswith(fake.version)


async def test_llamacpp_falls_back_to_slots(fake_server, backend_client: ClientFactory) -> None:
    """Without --metrics, llama.cpp's load comes from /slots instead."""
    fake = await fake_server("llamacpp", models=["m.gguf"], metrics_enabled=False, total_slots=4)
    fake.set_load(running=3)
    probe = PROBES["llamacpp"](backend_client(fake.url), slow_seconds=0.5)
    first = await probe.probe()
    assert first.health == H
    second = await probe.probe()
    assert second.load is not None and second.load.running == 3
    assert fake.requests_to("/slots")
    assert second.models and second.models[0].metadata["total_slots"] == "4"


async def test_loaded_and_unloaded_models(fake_server, backend_client: ClientFactory) -> None:
    """Ollama /api/ps and LM Studio's state drive each model's loaded flag."""
    for kind in ("ollama", "lmstudio"):
        fake = await fake_server(kind, models=["a", "b"])
        fake.unload_model("b")
        probe = PROBES[kind](backend_client(fake.url), slow_seconds=0.5)
        obs = await probe.probe()
        loaded = {m.id.split(":")[0]: m.loaded for m in obs.models or []}
        assert loaded == {"a": True, "b": False}
        fake.load_model("b")
        fake.unload_model("a")
        obs = await probe.probe()
        loaded = {m.id.split(":")[0]: m.loaded for m in obs.models or []}
        assert loaded == {"a": False, "b": True}


async def test_down_error_hang_and_loading(fake_server, backend_client: ClientFactory) -> None:
    """Refused, 500s, hanging: unhealthy with a reason, models kept; loading is LOADING."""
    fake = await fake_server("llamacpp", models=["m.gguf"])
    # Generous limits: a loaded machine must not turn the healthy first probe slow or
    # timed out; the hang below still ends in the client's timeout.
    probe = PROBES["llamacpp"](backend_client(fake.url, timeout=1.0), slow_seconds=5.0)
    assert (await probe.probe()).health == H
    fake.mode = "loading"
    obs = await probe.probe()
    assert obs.health == L and "loading" in obs.reason
    fake.mode = "error"
    obs = await probe.probe()
    assert obs.health == U and "HTTP 500" in obs.reason
    assert [m.id for m in obs.models or []] == ["m.gguf"]
    fake.mode = "hang"
    obs = await asyncio.wait_for(probe.probe(), 15)
    assert obs.health == U and "timeout" in obs.reason
    fake.mode = "ok"
    await fake.stop()
    obs = await probe.probe()
    assert obs.health == U and "connection refused" in obs.reason


async def test_secondary_failure_is_degraded(fake_server, backend_client: ClientFactory) -> None:
    """Healthy /health but a failing metrics page: DEGRADED, with the last load kept."""
    fake = await fake_server("vllm", models=["m"])
    fake.set_load(running=5)
    probe = PROBES["vllm"](backend_client(fake.url), slow_seconds=0.5)
    assert (await probe.probe()).load.running == 5
    fake.models.clear()  # the metrics page still answers; the model list goes empty
    obs = await probe.probe()
    assert obs.health == H and obs.models == []


async def test_overloaded_ollama_is_degraded_not_dead(
    fake_server, backend_client: ClientFactory
) -> None:
    """Ollama's 503 (queue full) and others' 429 mean busy, not down."""
    fake = await fake_server("ollama", models=["m"])
    probe = PROBES["ollama"](backend_client(fake.url), slow_seconds=0.5)
    fake.mode = "overloaded"
    obs = await probe.probe()
    # The fake refuses only inference when overloaded; health probes still answer.
    assert obs.health == H


async def test_api_key_is_sent(fake_server, backend_client: ClientFactory) -> None:
    """The backend API key goes as a bearer token on every probe."""
    from corral.config import Secret

    fake = await fake_server("openai", models=["m"])
    probe = PROBES["openai"](backend_client(fake.url, api_key=Secret("sk-test")), slow_seconds=0.5)
    await probe.probe()
    assert fake.requests
    assert all(r.headers.get("Authorization") == "Bearer sk-test" for r in fake.requests)


async def test_large_model_list_is_read_whole(backend_client: ClientFactory) -> None:
    """A model list far larger than one read chunk is read whole, then capped for reporting."""
    from aiohttp import web

    from agent.limits import bounded_status
    from tests.support.net import free_port

    ids = [f"org/model-{i:05d}-with-a-long-name" for i in range(3000)]

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": i} for i in ids]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        probe = PROBES["openai"](backend_client(f"http://127.0.0.1:{port}"), slow_seconds=0.5)
        obs = await probe.probe()
        assert obs.health == H
        assert [m.id for m in obs.models or []] == ids
        status = bounded_status(types_pb2.BackendStatus(models=obs.models))
        assert len(status.models) == 1024
    finally:
        await runner.cleanup()


async def test_slow_answers_are_degraded(backend_client: ClientFactory) -> None:
    """Answers slower than the slow threshold (but inside the timeout) make a DEGRADED verdict."""
    from aiohttp import web

    from tests.support.net import free_port

    delay = asyncio.Event()

    async def models(request: web.Request) -> web.Response:
        if delay.is_set():
            await asyncio.sleep(0.3)  # the server under test is slow on purpose
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        client = backend_client(f"http://127.0.0.1:{port}", timeout=2.0)
        probe = PROBES["openai"](client, slow_seconds=0.2)
        assert (await probe.probe()).health == H
        delay.set()
        obs = await probe.probe()
        assert obs.health == D and "slow" in obs.reason
        assert [m.id for m in obs.models or []] == ["m"]
    finally:
        await runner.cleanup()


async def test_a_request_aiohttp_refuses_is_a_configuration_error(
    fake_server, backend_client: ClientFactory
) -> None:
    """A request aiohttp refuses (a key beside credentials in the URL) is answered, not raised."""
    from corral.config import Secret

    fake = await fake_server("vllm", models=["m"])
    url = fake.url.replace("http://", "http://user:pw@")
    probe = PROBES["vllm"](backend_client(url, api_key=Secret("sk-test")), slow_seconds=0.5)
    obs = await probe.probe()
    assert obs.health == U and "configuration error" in obs.reason
    assert not fake.requests


async def _serve(routes: dict[str, Any]) -> web.AppRunner:
    """An aiohttp server on a free port answering GET path with routes[path] (JSON or text)."""

    def answer(body: Any) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if isinstance(body, str):
                return web.Response(text=body)
            return web.json_response(body)

        return handle

    app = web.Application()
    for path, body in routes.items():
        app.router.add_get(path, answer(body))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", free_port()).start()
    return runner


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def test_ollama_before_0_1_38_is_healthy(backend_client: ClientFactory) -> None:
    """Ollama 0.1.37 (null model list when empty, no /api/ps) is healthy with no models."""
    runner = await _serve(
        {
            "/": "Ollama is running",
            "/api/version": {"version": "0.1.37"},
            "/api/tags": {"models": None},
        }
    )
    try:
        probe = PROBES["ollama"](backend_client(_url(runner)), slow_seconds=0.5)
        for _ in range(2):
            obs = await probe.probe()
            assert (obs.health, obs.reason, obs.models) == (H, "ok", [])
        assert probe.server_version == "0.1.37"
    finally:
        await runner.cleanup()


def _lmstudio_model(model_id: str, state: str) -> dict[str, Any]:
    """One /api/v0/models entry, as LM Studio's REST API documents it."""
    entry: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "type": "llm",
        "publisher": "lmstudio-community",
        "arch": "qwen3",
        "compatibility_type": "gguf",
        "quantization": "Q4_K_M",
        "state": state,
        "max_context_length": 32768,
    }
    if state == "loaded":
        entry["loaded_context_length"] = 8192
    return entry


async def test_lmstudio_with_jit_loading_off_offers_only_loaded_models(
    backend_client: ClientFactory,
) -> None:
    """JIT loading off: /v1/models lists the loaded models only, and only they are reported."""
    runner = await _serve(
        {
            "/v1/models": {
                "object": "list",
                "data": [{"id": "qwen3-8b", "object": "model", "owned_by": "organization_owner"}],
            },
            "/api/v0/models": {
                "object": "list",
                "data": [
                    _lmstudio_model("qwen3-8b", "loaded"),
                    _lmstudio_model("llama-3.1-70b", "not-loaded"),
                ],
            },
        }
    )
    try:
        probe = PROBES["lmstudio"](backend_client(_url(runner)), slow_seconds=0.5)
        obs = await probe.probe()
        assert obs.health == H, obs.reason
        assert [(m.id, m.loaded, m.context_length) for m in obs.models or []] == [
            ("qwen3-8b", True, 8192)
        ]
    finally:
        await runner.cleanup()
