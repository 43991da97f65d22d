"""The agent against a real control plane over a real etcd: what the control plane holds.

Every server type is detected and its models and load reach the control plane; a backend
going down and coming back is reflected within seconds; a hanging server is marked unhealthy
without stalling the agent; a loading llama.cpp is LOADING, not dead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from corral.v1 import types_pb2
from tests.agent.conftest import AgentFactory
from tests.agent.controlplane_replicas import H, ReplicaFactory, agent_settings
from tests.fakes import KINDS, FakeModel
from tests.support.net import eventually

L = types_pb2.HEALTH_STATE_LOADING
U = types_pb2.HEALTH_STATE_UNHEALTHY
TYPES = {
    "ollama": types_pb2.BACKEND_TYPE_OLLAMA,
    "vllm": types_pb2.BACKEND_TYPE_VLLM,
    "sglang": types_pb2.BACKEND_TYPE_SGLANG,
    "llamacpp": types_pb2.BACKEND_TYPE_LLAMACPP,
    "lmstudio": types_pb2.BACKEND_TYPE_LMSTUDIO,
    "openai": types_pb2.BACKEND_TYPE_OPENAI,
    "litellm": types_pb2.BACKEND_TYPE_LITELLM,
    "lmdeploy": types_pb2.BACKEND_TYPE_LMDEPLOY,
    "docker-model-runner": types_pb2.BACKEND_TYPE_DOCKER_MODEL_RUNNER,
    "lemonade": types_pb2.BACKEND_TYPE_LEMONADE,
    "vllm-mlx": types_pb2.BACKEND_TYPE_VLLM_MLX,
    "tgi": types_pb2.BACKEND_TYPE_TGI,
    "nim": types_pb2.BACKEND_TYPE_NIM,
    "triton": types_pb2.BACKEND_TYPE_TRITON,
}


# Server types whose load the agent can read (the others expose none, or waiting only).
WITH_LOAD = ("vllm", "sglang", "llamacpp", "lmdeploy", "tgi", "nim")
KV_CACHE = ("vllm", "sglang", "lmdeploy", "nim")
NO_CONTEXT = ("openai", "lmdeploy", "docker-model-runner", "lemonade", "vllm-mlx", "triton")


async def test_every_kind_detected_with_models_load_and_down_up(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """Each server type: detected, its models and load held by the control plane, down and up."""
    cp = await replicas("cp-a")
    fakes = {}
    for kind in KINDS:
        fake = await fake_server(
            kind,
            models=[FakeModel(id=f"{kind}-model", context_length=4096)],
            name=f"{kind}-1",
            anthropic_native=kind == "vllm",
        )
        fake.set_load(running=3, waiting=2, kv_cache_usage=0.25)
        fakes[kind] = fake
        await start_agent(**agent_settings(cp, fake.url, f"{kind}-1"))

    for kind, fake in fakes.items():

        async def registered(kind: str = kind) -> types_pb2.Backend | None:
            backend = await cp.backend(f"{kind}-1")
            if backend is None or backend.status.health != H:
                return None
            if kind in WITH_LOAD and backend.status.load.running != 3:
                return None
            return backend

        backend = await eventually(registered, within=15)
        assert backend.spec.type == TYPES[kind], kind
        # Docker Model Runner and Lemonade register where their OpenAI API lives.
        assert backend.spec.url == fake.openai_url.removesuffix("/v1"), kind
        assert [m.id for m in backend.status.models] == [fake.models[0].id], kind
        model = backend.status.models[0]
        assert model.loaded, kind
        if kind not in NO_CONTEXT:
            assert model.context_length == 4096, kind
        if kind in WITH_LOAD:
            assert backend.status.load.waiting == 2, kind
        if kind in KV_CACHE:
            assert backend.status.load.kv_cache_usage == pytest.approx(0.25), kind
        caps = set(backend.status.capabilities)
        assert (types_pb2.CAPABILITY_ANTHROPIC_MESSAGES in caps) == (kind == "vllm"), kind

    # Every backend goes down, then comes back at the same URL.
    for fake in fakes.values():
        await fake.stop()
    for kind in fakes:

        async def down(kind: str = kind) -> bool:
            backend = await cp.backend(f"{kind}-1")
            return backend is not None and backend.status.health == U

        await eventually(down, within=10)
        backend = await cp.backend(f"{kind}-1")
        assert backend is not None and "refused" in backend.status.reason, kind
        # The models it served are still known (it is unhealthy, not forgotten).
        assert [m.id for m in backend.status.models] == [fakes[kind].models[0].id]
    for fake in fakes.values():
        await fake.start()
    for kind in fakes:

        async def up(kind: str = kind) -> bool:
            backend = await cp.backend(f"{kind}-1")
            return backend is not None and backend.status.health == H

        await eventually(up, within=10)


async def test_hanging_backend_is_unhealthy_and_agent_keeps_reporting(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """A server that accepts and never answers turns UNHEALTHY; reports keep flowing."""
    cp = await replicas("cp-a")
    fake = await fake_server("vllm", models=["m"], name="hang-1")
    agent = await start_agent(
        **agent_settings(cp, fake.url, "hang-1") | {"probe_timeout_seconds": 0.4}
    )

    async def health() -> int | None:
        backend = await cp.backend("hang-1")
        return backend.status.health if backend else None

    await eventually(lambda: _is(health, H))
    fake.mode = "hang"
    await eventually(lambda: _is(health, U), within=10)
    backend = await cp.backend("hang-1")
    assert backend is not None and "timeout" in backend.status.reason
    # The agent is not stalled: it keeps probing and its heartbeats keep being acknowledged.
    acked = agent.reporter.acked_seq
    timeouts = _probe_errors(agent, "/health", "timeout")
    await eventually(lambda: agent.reporter.acked_seq >= acked + 2, within=10)
    await eventually(lambda: _probe_errors(agent, "/health", "timeout") >= timeouts + 2)
    fake.mode = "ok"
    await eventually(lambda: _is(health, H), within=10)


async def test_loading_llamacpp_is_loading_not_dead(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """llama.cpp's 503 "Loading model" is LOADING (at start and later), then HEALTHY."""
    cp = await replicas("cp-a")
    fake = await fake_server("llamacpp", models=["m.gguf"], name="llama-1")
    fake.mode = "loading"
    await start_agent(**agent_settings(cp, fake.url, "llama-1") | {"type": "auto"})
    seen: list[int] = []

    async def health() -> int | None:
        backend = await cp.backend("llama-1")
        if backend is None:
            return None
        seen.append(backend.status.health)
        return backend.status.health

    await eventually(lambda: _is(health, L))
    backend = await cp.backend("llama-1")
    assert backend is not None and backend.spec.type == types_pb2.BACKEND_TYPE_LLAMACPP
    assert "loading" in backend.status.reason.lower()
    fake.mode = "ok"
    await eventually(lambda: _is(health, H))
    assert U not in seen


async def _is(check: Callable[[], Awaitable[int | None]], state: int) -> bool:
    return await check() == state


def _probe_errors(agent: object, endpoint: str, kind: str) -> float:
    counter = agent.metrics.probe_errors.labels(endpoint=endpoint, kind=kind)
    return float(counter._value.get())
