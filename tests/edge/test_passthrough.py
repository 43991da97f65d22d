"""Native pass-through (/ollama, /vllm, /sglang, /llamacpp, /lmstudio) through a real edge,
with the official `ollama` and `openai` clients, in front of fakes of several server types."""

from __future__ import annotations

import aiohttp
import ollama
import openai
import pytest
from yarl import URL

from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, snapshot
from tests.edge.test_messages_route import typed
from tests.fakes import FakeServer, running_fakes


async def test_official_ollama_client(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """Ollama SDK: list/ps merged, chat to Ollama only, show/version pass; unknown 404, pull 403."""
    async with running_fakes(
        FakeServer("ollama", ["gemma4:4b", "llama3:latest"], "ollama-a"),
        FakeServer("ollama", ["qwen3:8b", "gemma4:4b"], "ollama-b"),
        FakeServer("vllm", ["llama3:latest"], "vllm-c"),
    ) as (a, b, vllm):
        a.stream_chunks = b.stream_chunks = 5
        snapshots.publish(
            snapshot(1, [typed(a), typed(b), typed(vllm)], aliases={"gemma": ["gemma4:4b"]})
        )
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = ollama.AsyncClient(host=f"{running.url}/ollama")

        listed = await client.list()
        names = [m.model for m in listed.models]
        # With the alias; ordered by full name ("gemma" is "gemma:latest"), like Ollama.
        assert names == ["gemma4:4b", "gemma", "llama3:latest", "qwen3:8b"]
        assert listed.models[1].details == listed.models[0].details
        running_models = await client.ps()
        assert {m.model for m in running_models.models} <= {
            "gemma4:4b",
            "llama3:latest",
            "qwen3:8b",
        }

        reply = await client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content == "[ollama-b] hi"
        assert reply.done

        for _ in range(3):  # never the vLLM backend, though it serves the same model id
            pieces = []
            async for part in await client.chat(
                model="llama3", messages=[{"role": "user", "content": "stream me"}], stream=True
            ):
                pieces.append(part.message.content)
            assert "".join(pieces) == "[ollama-a] stream me"
            assert len(pieces) > 1
        assert not vllm.requests_to("/api/chat")

        aliased = await client.chat(model="gemma", messages=[{"role": "user", "content": "x"}])
        assert aliased.message.content in ("[ollama-a] x", "[ollama-b] x")
        sent = [r.body_json["model"] for f in (a, b) for r in f.requests_to("/api/chat")]
        assert "gemma4:4b" in sent and "gemma" not in sent

        # Ollama's OpenAI-compatible API below the same prefix.
        compat = openai.AsyncOpenAI(
            base_url=f"{running.url}/ollama/v1", api_key="unused", max_retries=0
        )
        try:
            done = await compat.chat.completions.create(
                model="llama3:latest", messages=[{"role": "user", "content": "compat"}]
            )
            assert done.choices[0].message.content == "[ollama-a] compat"
        finally:
            await compat.close()

        shown = await client.show("qwen3:8b")
        assert shown.details is not None

        with pytest.raises(ollama.ResponseError) as missing:
            await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
        assert missing.value.status_code == 404
        assert missing.value.error == 'model "nope" not found, try pulling it first'

        with pytest.raises(ollama.ResponseError) as pulled:
            await client.pull("gemma4:4b")
        assert pulled.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as deleted:
            await client.delete("gemma4:4b")
        assert deleted.value.status_code == 403
        assert not a.requests_to("/api/pull") and not a.requests_to("/api/delete")


async def test_openai_style_servers(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """/vllm, /sglang, /llamacpp, /lmstudio reach only their type's backends; admin writes 403."""
    model = "Qwen/Qwen3-8B"
    async with running_fakes(
        FakeServer("vllm", [model], "vllm-a"),
        FakeServer("sglang", [model], "sglang-b"),
        FakeServer("llamacpp", [model], "llamacpp-c"),
        FakeServer("lmstudio", [model], "lmstudio-d"),
    ) as fakes:
        snapshots.publish(snapshot(1, [typed(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        for fake in fakes:
            prefix = fake.kind
            client = openai.AsyncOpenAI(
                base_url=f"{running.url}/{prefix}/v1", api_key="unused", max_retries=0
            )
            try:
                for _ in range(3):
                    done = await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "hello"}]
                    )
                    assert done.choices[0].message.content == f"[{fake.name}] hello"
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "a b c"}], stream=True
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
                assert text == f"[{fake.name}] a b c"
                listed = await client.models.list()
                assert [m.id for m in listed.data] == [model]
            finally:
                await client.close()
        vllm, sglang, llamacpp, lmstudio = fakes
        for fake in fakes:
            assert len(fake.requests_to("/v1/chat/completions")) == 4

        for path, fake in (
            ("/sglang/get_model_info", sglang),
            ("/llamacpp/props", llamacpp),
            ("/lmstudio/api/v0/models", lmstudio),
            ("/vllm/version", vllm),
        ):
            async with http.get(running.url + path) as resp:
                assert resp.status == 200, path
                assert resp.headers["X-Fake-Backend"] == fake.name

        async with http.post(
            f"{running.url}/vllm/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["type"] == "permission_error"
        assert not vllm.requests_to("/v1/load_lora_adapter")

        async with http.get(f"{running.url}/vllm/v1/models") as resp:
            assert resp.headers["X-Fake-Backend"] == "vllm-a"


async def test_no_backend_of_the_type(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """A model only on other types: 404 in the prefix's shape; no model and no such backend: 503."""
    async with running_fakes(FakeServer("vllm", ["m"], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [typed(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = ollama.AsyncClient(host=f"{running.url}/ollama")
        with pytest.raises(ollama.ResponseError) as missing:
            await client.chat(model="m", messages=[{"role": "user", "content": "x"}])
        assert missing.value.status_code == 404
        async with http.get(f"{running.url}/ollama/api/version") as resp:
            assert resp.status == 503
            assert isinstance((await resp.json())["error"], str)
        async with http.get(f"{running.url}/sglang/get_model_info") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "no_backend_available"
        assert not fake.requests_to("/api/chat")


async def test_ollama_stream_cut_midway(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """An Ollama backend dying mid-stream ends NDJSON with an error line: ResponseError raised."""
    async with running_fakes(FakeServer("ollama", ["gemma4:4b"], "ollama-a")) as (fake,):
        fake.stream_chunks = 20
        fake.chunk_delay = 0.05
        snapshots.publish(snapshot(1, [typed(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = ollama.AsyncClient(host=f"{running.url}/ollama")
        parts = []
        with pytest.raises(ollama.ResponseError) as cut:
            async for part in await client.chat(
                model="gemma4:4b",
                messages=[{"role": "user", "content": "one two three four five six"}],
                stream=True,
            ):
                parts.append(part)
                if len(parts) == 1:
                    await fake.stop()
        assert "interrupted" in cut.value.error
        assert not parts[-1].done


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/vllm/v1/chat/completions/../../v1/load_lora_adapter"),
        ("POST", "/vllm/v1/load_lora_adapter?x=/v1/chat/completions"),
        ("POST", "/vllm/sleep"),
        ("POST", "/ollama/api/chat/../pull"),
        ("DELETE", "/ollama/api/../api/delete"),
        ("POST", "/ollama/api/blobs/sha256:abc"),
        ("POST", "/ollama/api/create"),
    ],
)
async def test_admin_writes_never_reach_a_backend(
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
) -> None:
    """Non-inference writes (dot segments, queries too) get 403 or 404, and are never forwarded."""
    async with running_fakes(
        FakeServer("vllm", ["m"], "vllm-a"), FakeServer("ollama", ["g:1b"], "ollama-b")
    ) as fakes:
        snapshots.publish(snapshot(1, [typed(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        url = URL(running.url + path, encoded=True)  # sent as written: no dot-segment folding
        async with http.request(method, url, json={"model": "m", "name": "g:1b"}) as resp:
            assert resp.status in (403, 404)
            assert "error" in await resp.json()
        assert not [r for f in fakes for r in f.requests if r.method != "GET"]
