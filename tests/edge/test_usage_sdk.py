"""Usage rows from the official openai and anthropic SDKs match the backend's own counts."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import ollama
import pytest

from corral.config import PriceConfig, UsageConfig
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, snapshot
from tests.edge.test_messages_route import typed
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NATIVE = "native-m"
EMBED = "BAAI/bge-small-en-v1.5"
PRICE = PriceConfig(model=MODEL, input=2.0, cached_input=1.0, output=8.0)


async def rows(running: RunningEdge, count: int) -> list[dict[str, Any]]:
    """The edge's usage rows, once there are `count` of them (in arrival order)."""
    path = Path(running.config.state_dir or "") / "usage.db"

    def read() -> list[dict[str, Any]] | None:
        if not path.exists():
            return None
        db = sqlite3.connect(path)
        db.row_factory = sqlite3.Row
        try:
            found = [dict(r) for r in db.execute("SELECT * FROM corral_usage ORDER BY ts")]
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()
        return found if len(found) >= count else None

    result: list[dict[str, Any]] = await eventually(read)
    assert len(result) == count
    return result


def tokens(row: dict[str, Any]) -> tuple[int, int]:
    return row["prompt_tokens"], row["completion_tokens"]


@pytest.fixture
async def running(snapshots: SnapshotServer, start_edge: StartEdge) -> Any:
    async with running_fakes(
        FakeServer("vllm", [MODEL], "vllm-a"),
        FakeServer("llamacpp", [NATIVE], "llamacpp-n", anthropic_native=True),
        FakeServer("openai", [EMBED], "emb-a"),
    ) as fakes:
        snapshots.publish(snapshot(1, [typed(fake) for fake in fakes]))
        usage = UsageConfig(flush_interval_seconds=0.05, prices=(PRICE,))
        edge = await start_edge(snapshots, usage=usage)
        await edge.wait_version(1)
        yield edge


async def test_openai_sdk(running: RunningEdge) -> None:
    """Chat (plain, streamed with and without usage asked) and embeddings: exact tokens."""
    client = running.client()
    messages: Any = [{"role": "user", "content": "count my tokens please"}]
    plain = await client.chat.completions.create(model=MODEL, messages=messages)
    assert plain.usage is not None
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    chunks = [chunk async for chunk in stream]
    # Usage the client did not ask for is not shown to it.
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == plain.choices[0].message.content
    )
    asked = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    last = [chunk async for chunk in asked][-1]
    assert last.usage is not None and last.choices == []
    embedded = await client.embeddings.create(model=EMBED, input=["one two three"])
    found = await rows(running, 4)
    expected = (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert [tokens(r) for r in found[:3]] == [expected] * 3
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == expected
    assert tokens(found[3]) == (embedded.usage.prompt_tokens, 0)
    assert [r["stream"] for r in found] == [0, 1, 1, 0]
    assert [r["estimated"] for r in found] == [0, 0, 0, 0]
    assert all(r["status"] == 200 and r["backend"] for r in found)
    cost = (expected[0] * 2.0 + expected[1] * 8.0) / 1e6
    assert found[0]["cost_usd"] == pytest.approx(cost)
    assert found[1]["ttft_ms"] is not None and found[1]["ttft_ms"] <= found[1]["duration_ms"]


async def test_anthropic_sdk(running: RunningEdge) -> None:
    """Messages, translated and native, plain and streamed: the backend's own counts."""
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "how many tokens is this"}]
    try:
        seen = []
        for model in (MODEL, NATIVE):
            message = await client.messages.create(model=model, max_tokens=64, messages=messages)
            seen.append((message.usage.input_tokens, message.usage.output_tokens))
            async with client.messages.stream(
                model=model, max_tokens=64, messages=messages
            ) as stream:
                final = await stream.get_final_message()
            seen.append((final.usage.input_tokens, final.usage.output_tokens))
    finally:
        await client.close()
    found = await rows(running, 4)
    assert [tokens(r) for r in found] == seen
    assert [r["backend"] for r in found] == ["vllm-a", "vllm-a", "llamacpp-n", "llamacpp-n"]
    assert [r["endpoint"] for r in found] == ["messages"] * 4
    assert not any(r["estimated"] for r in found)
    assert found[0]["cost_usd"] > 0 and found[2]["cost_usd"] == 0  # unpriced: self-hosted


async def test_ollama_native(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """The native pass-through (official ollama client): Ollama's own counters, both ways."""
    async with running_fakes(FakeServer("ollama", ["qwen3:8b"], "ollama-a")) as (fake,):
        snapshots.publish(snapshot(1, [typed(fake)]))
        edge = await start_edge(snapshots, usage=UsageConfig(flush_interval_seconds=0.05))
        await edge.wait_version(1)
        client = ollama.AsyncClient(host=f"{edge.url}/ollama")
        messages: Any = [{"role": "user", "content": "count these words for me"}]
        plain = await client.chat(model="qwen3:8b", messages=messages)
        parts = [
            p async for p in await client.chat(model="qwen3:8b", messages=messages, stream=True)
        ]
        found = await rows(edge, 2)
    last = parts[-1]
    assert last.done and plain.prompt_eval_count and plain.eval_count
    assert tokens(found[0]) == (plain.prompt_eval_count, plain.eval_count)
    assert tokens(found[1]) == (last.prompt_eval_count, last.eval_count)
    assert [r["endpoint"] for r in found] == ["ollama", "ollama"]
    assert not any(r["estimated"] for r in found)


async def test_ollama_native_rows_say_what_streamed_and_what_generated(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Native rows: stream as the answer came; no completion for details, embeddings or reads."""
    fake_server = FakeServer("ollama", ["qwen3:8b", "nomic-embed-text:latest"], "ollama-a")
    async with running_fakes(fake_server) as (fake,):
        snapshots.publish(snapshot(1, [typed(fake)]))
        edge = await start_edge(snapshots, usage=UsageConfig(flush_interval_seconds=0.05))
        await edge.wait_version(1)
        url = f"{edge.url}/ollama"
        chat = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi there"}]}
        asked: list[tuple[str, str, Any]] = [
            ("POST", "/api/chat", {**chat, "stream": False}),
            ("POST", "/api/chat", chat),  # Ollama streams unless told not to
            ("POST", "/api/show", {"model": "qwen3:8b"}),
            ("POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hi there"}),
            ("POST", "/api/embed", {"model": "nomic-embed-text", "input": "hi there"}),
            ("GET", "/api/version", None),
            ("POST", "/api/chat", {**chat, "model": "missing"}),  # refused: a 404
        ]
        async with aiohttp.ClientSession() as http:
            for method, path, body in asked:
                async with http.request(method, url + path, json=body) as resp:
                    assert resp.status == (404 if body and body["model"] == "missing" else 200)
                    await resp.read()
        found = await rows(edge, len(asked))
    assert [r["stream"] for r in found] == [0, 1, 0, 0, 0, 0, 0]
    assert all(r["completion_tokens"] > 0 and not r["estimated"] for r in found[:2])
    assert [r["completion_tokens"] for r in found[2:]] == [0, 0, 0, 0, 0]
    assert found[4]["prompt_tokens"] > 0 and not found[4]["estimated"]  # its prompt_eval_count
