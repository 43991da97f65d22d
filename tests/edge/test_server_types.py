"""The server types added after the first six (LiteLLM proxy, LMDeploy, Docker Model Runner,
Lemonade, vLLM-MLX, TGI, NIM, Triton), each behind a real agent that detects it, reporting to
a real control plane, served through the edge to the official openai SDK; native prefixes
reach each type's own API."""

from __future__ import annotations

import aiohttp
import pytest

from tests.controlplane import harness as h
from tests.edge.conftest import RunningEdge, StartEdge, running_agents
from tests.fakes import FakeModel, FakeServer, running_fakes
from tests.support.net import eventually

NEW_KINDS = (
    "litellm",
    "lmdeploy",
    "docker-model-runner",
    "lemonade",
    "vllm-mlx",
    "tgi",
    "nim",
    "triton",
)


def _fakes() -> list[FakeServer]:
    return [
        FakeServer(
            kind,
            [FakeModel(f"{kind}-model", context_length=4096)],
            f"{kind}-a",
            anthropic_native=kind == "vllm-mlx",
        )
        for kind in NEW_KINDS
    ]


async def _served(http: aiohttp.ClientSession, edge: RunningEdge) -> set[str]:
    async with http.get(f"{edge.url}/v1/models") as resp:
        return {m["id"] for m in (await resp.json())["data"]}


@pytest.fixture
async def edge_over_every_type(start_edge: StartEdge, http: aiohttp.ClientSession):
    async with (
        running_fakes(*_fakes()) as fakes,
        h.running(h.config()) as address,
        running_agents(address, fakes),
    ):
        edge = await start_edge(None, controlplane=(address,))
        wanted = {f"{kind}-model" for kind in NEW_KINDS}

        async def all_in() -> bool:
            return wanted <= await _served(http, edge)

        await eventually(all_in, within=20)
        yield edge, {f.kind: f for f in fakes}


async def test_every_type_answers_the_openai_sdk_through_the_edge(edge_over_every_type) -> None:
    """Chat, whole and streamed, reaches each type's server at its API path (/engines, /api too)."""
    edge, fakes = edge_over_every_type
    client = edge.client()
    for kind, fake in fakes.items():
        model = f"{kind}-model"
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"hello {kind}"}]
        )
        assert raw.headers["x-corral-backend"] == fake.name, kind
        assert raw.parse().choices[0].message.content == f"[{fake.name}] hello {kind}"
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == f"[{fake.name}] streamed", kind
        path = fake.openai_url.removeprefix(fake.url) + "/chat/completions"
        assert len(fake.requests_to(path)) == 2, (kind, path)


async def test_native_prefixes_reach_each_types_own_api(
    edge_over_every_type, http: aiohttp.ClientSession
) -> None:
    """Each type's native prefix reaches a backend of that type as is; vLLM-MLX gets Messages."""
    edge, fakes = edge_over_every_type
    url = edge.url

    async def call(method: str, path: str, body: object = None) -> tuple[int, object, str]:
        async with http.request(method, url + path, json=body) as resp:
            return resp.status, await resp.json(), resp.headers.get("X-Corral-Backend", "")

    status, answer, backend = await call("POST", "/lmdeploy/generate", {"prompt": "hi"})
    assert (status, backend) == (200, "lmdeploy-a")
    assert isinstance(answer, dict) and answer["text"] == "[lmdeploy-a] hi"
    status, answer, _ = await call("POST", "/lmdeploy/v1/encode", {"input": "a b c"})
    assert status == 200 and isinstance(answer, dict) and answer["length"] == 3

    status, answer, backend = await call("POST", "/tgi/generate", {"inputs": "yo"})
    assert (status, backend) == (200, "tgi-a")
    assert answer == {"generated_text": "[tgi-a] yo"}

    body = {"model": "docker-model-runner-model", "messages": [{"role": "user", "content": "x"}]}
    status, answer, backend = await call(
        "POST", "/docker-model-runner/llama.cpp/v1/chat/completions", body
    )
    assert (status, backend) == (200, "docker-model-runner-a")
    assert fakes["docker-model-runner"].requests_to("/engines/llama.cpp/v1/chat/completions")

    status, answer, backend = await call("GET", "/lemonade/v1/system-info")
    assert (status, backend) == (200, "lemonade-a") and "Processor" in answer
    status, answer, backend = await call("GET", "/nim/v1/metadata")
    assert (status, backend) == (200, "nim-a") and "modelInfo" in answer

    # Model management stays with the server: a write outside inference is refused.
    status, answer, _ = await call("POST", "/lemonade/v1/pull", {"model_name": "x"})
    assert status == 403

    messages = {
        "model": "vllm-mlx-model",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "native"}],
    }
    async with http.post(
        url + "/v1/messages", json=messages, headers={"anthropic-version": "2023-06-01"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Corral-Backend"] == "vllm-mlx-a"
    assert fakes["vllm-mlx"].requests_to("/v1/messages")  # forwarded as is, not translated
