"""The OpenAI API through the edge, with the official client, in front of fake backends."""

from __future__ import annotations

import asyncio

import openai
import orjson
import pytest

from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EMBED = "BAAI/bge-small-en-v1.5"


async def test_chat_non_streaming(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """A non-streaming chat completion is answered by the only backend, with routing headers."""
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        raw = await running.client().chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello there"}]
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == "[vllm-a] hello there"
        assert raw.headers["x-corral-backend"] == "vllm-a"
        assert raw.headers["x-corral-route"] == "sticky"
        assert raw.headers["x-fake-backend"] == "vllm-a"
        assert fake.requests[-1].body_json["messages"][0]["content"] == "hello there"


async def test_chat_streaming(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """A streaming chat completion arrives as several chunks that add up to the echo."""
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        fake.stream_chunks = 6
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        stream = await running.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "stream me a reply"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert len(pieces) > 2
        assert "".join(pieces) == "[vllm-a] stream me a reply"


async def test_completions_and_embeddings(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """Legacy completions (plain and streaming) and embeddings go to backends serving them."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "vllm-a"), FakeServer("openai", [EMBED], "emb-a")
    ) as (chat_fake, emb_fake):
        snapshots.publish(snapshot(1, [from_fake(chat_fake), from_fake(emb_fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = running.client()
        completion = await client.completions.create(model=MODEL, prompt="once upon a time")
        assert completion.choices[0].text
        stream = await client.completions.create(model=MODEL, prompt="once upon", stream=True)
        texts = [c.choices[0].text async for c in stream if c.choices]
        assert "".join(texts)
        embedding = await client.embeddings.create(model=EMBED, input=["a", "b"])
        assert len(embedding.data) == 2
        assert len(embedding.data[0].embedding) > 0
        assert emb_fake.requests_to("/v1/embeddings")
        assert not chat_fake.requests_to("/v1/embeddings")


async def test_models_union_and_aliases(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """/v1/models lists models of routable backends plus aliases; drained/unhealthy are left out."""
    snap = snapshot(
        3,
        [
            backend("a", "http://127.0.0.1:1", ["m1", "m2"]),
            backend("b", "http://127.0.0.1:2", ["m2", "org/m3"]),
            backend("c", "http://127.0.0.1:3", ["hidden-drained"], drained=True),
            backend("d", "http://127.0.0.1:4", ["hidden-down"], health=4),
        ],
        aliases={"fast": ["m1"]},
    )
    snapshots.publish(snap)
    running = await start_edge(snapshots)
    await running.wait_version(3)
    client = running.client()
    ids = sorted([m.id async for m in client.models.list()])
    assert ids == ["fast", "m1", "m2", "org/m3"]
    model = await client.models.retrieve("org/m3")
    assert model.id == "org/m3" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("hidden-down")
    assert info.value.code == "model_not_found"


async def test_alias_rewrites_model(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """A request for an alias reaches the backend with the backend's own model name."""
    async with running_fakes(FakeServer("ollama", ["llama3.1:8b"], "ollama-a")) as (fake,):
        canonical = fake.models[0].id
        snapshots.publish(snapshot(1, [from_fake(fake)], aliases={"llama": [canonical]}))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        completion = await running.client().chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "[ollama-a] hi"
        assert fake.requests[-1].body_json["model"] == canonical


async def test_first_chunk_is_not_held_back(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """The first streamed chunk reaches the client with the headers while the backend streams on."""
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        fake.stream_chunks = 3
        fake.chunk_delay = 1.0  # later chunks are far behind the first
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        body = orjson.dumps(
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a b c"}]}
        )
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(running.config.listen.split(":")[1])
        )
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            await writer.drain()
            first = await reader.read(65536)
            head, _, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"data: " in rest  # the first chunk came in the same read as the headers
            assert fake.inflight == 1  # and the stream is still going
        finally:
            writer.close()


async def test_many_concurrent_streams(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """Sixty-four concurrent streams over two backends all arrive whole and in order."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "vllm-a"), FakeServer("sglang", [MODEL], "sglang-b")
    ) as fakes:
        for fake in fakes:
            fake.stream_chunks = 8
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = running.client()

        async def one(i: int) -> tuple[str, str]:
            stream = await client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"stream number {i} please"}],
                stream=True,
            )
            backend = stream.headers["x-corral-backend"]
            text = "".join(
                [c.choices[0].delta.content or "" async for c in stream.parse() if c.choices]
            )
            return backend, text

        results = await asyncio.gather(*(one(i) for i in range(64)))
        for i, (backend, text) in enumerate(results):
            assert text == f"[{backend}] stream number {i} please"
        assert {b for b, _ in results} == {"vllm-a", "sglang-b"}
