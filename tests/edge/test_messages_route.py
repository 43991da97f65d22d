"""Anthropic's Messages API through the edge, with the official `anthropic` SDK, in front of
fakes that speak it natively and fakes that need the translation to OpenAI chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import pytest

from corral.config import Secret
from corral.v1 import types_pb2
from tests.controlplane import harness as h
from tests.edge.conftest import RunningEdge, StartEdge, running_agents
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.etcd import EtcdCluster

TYPES = {
    "ollama": types_pb2.BACKEND_TYPE_OLLAMA,
    "vllm": types_pb2.BACKEND_TYPE_VLLM,
    "sglang": types_pb2.BACKEND_TYPE_SGLANG,
    "llamacpp": types_pb2.BACKEND_TYPE_LLAMACPP,
    "lmstudio": types_pb2.BACKEND_TYPE_LMSTUDIO,
    "openai": types_pb2.BACKEND_TYPE_OPENAI,
}
TOOL = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
}


def typed(fake: FakeServer, **kwargs: Any) -> types_pb2.Backend:
    """The fake's Backend with its server type, and the Messages capability when it has it."""
    message = from_fake(fake, kind=TYPES[fake.kind], **kwargs)
    if fake.anthropic_native:
        message.status.capabilities.append(types_pb2.CAPABILITY_ANTHROPIC_MESSAGES)
    return message


@asynccontextmanager
async def sdk(
    running: RunningEdge, api_key: str = "unused"
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=api_key, max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def edge_for(
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    backends: list[types_pb2.Backend],
    aliases: dict[str, list[str]] | None = None,
    **overrides: Any,
) -> RunningEdge:
    snapshots.publish(snapshot(1, backends, aliases=aliases))
    running = await start_edge(snapshots, **overrides)
    await running.wait_version(1)
    return running


async def test_native_and_translated_backends(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Plain and streamed messages: native backends get /v1/messages, others OpenAI translation."""
    async with running_fakes(
        FakeServer("llamacpp", ["native-m"], "llamacpp-n", anthropic_native=True),
        FakeServer("vllm", ["openai-m"], "vllm-t"),
    ) as (native, translated):
        translated.stream_chunks = 5
        running = await edge_for(snapshots, start_edge, [typed(native), typed(translated)])
        async with sdk(running) as client:
            for fake, model in ((native, "native-m"), (translated, "openai-m")):
                message = await client.messages.create(
                    model=model,
                    max_tokens=100,
                    system="be brief",
                    messages=[{"role": "user", "content": "hello there"}],
                )
                assert message.content[0].type == "text"
                assert message.content[0].text == f"[{fake.name}] hello there"
                assert message.stop_reason == "end_turn"
                assert message.usage.output_tokens > 0

                async with client.messages.stream(
                    model=model,
                    max_tokens=100,
                    messages=[{"role": "user", "content": "stream this reply"}],
                ) as stream:
                    pieces = [text async for text in stream.text_stream]
                    final = await stream.get_final_message()
                assert "".join(pieces) == f"[{fake.name}] stream this reply"
                assert final.stop_reason == "end_turn"
                assert final.model == model
        assert [r.path for r in native.requests if r.method == "POST"] == ["/v1/messages"] * 2
        assert [r.path for r in translated.requests if r.method == "POST"] == [
            "/v1/chat/completions"
        ] * 2
        sent = translated.requests_to("/v1/chat/completions")[0].body_json
        assert sent["messages"][0] == {"role": "system", "content": "be brief"}
        assert sent["max_tokens"] == 100
        assert len(pieces) > 1


@pytest.mark.parametrize("native", [False, True])
async def test_tool_use_round_trip(
    snapshots: SnapshotServer, start_edge: StartEdge, native: bool
) -> None:
    """A tool call comes back as tool_use (plain, streamed); the tool result gets the final text."""
    async with running_fakes(FakeServer("vllm", ["m"], "vllm-a", anthropic_native=native)) as (
        fake,
    ):
        running = await edge_for(snapshots, start_edge, [typed(fake)])
        async with sdk(running) as client:
            ask: list[Any] = [{"role": "user", "content": "define corral"}]
            message = await client.messages.create(
                model="m", max_tokens=200, tools=[TOOL], messages=ask
            )
            assert message.stop_reason == "tool_use"
            (call,) = [b for b in message.content if b.type == "tool_use"]
            assert call.name == "lookup"
            assert call.input == {"text": "define corral"}

            async with client.messages.stream(
                model="m", max_tokens=200, tools=[TOOL], messages=ask
            ) as stream:
                streamed = await stream.get_final_message()
            assert streamed.stop_reason == "tool_use"
            (streamed_call,) = [b for b in streamed.content if b.type == "tool_use"]
            assert streamed_call.input == {"text": "define corral"}

            follow_up = [
                *ask,
                {"role": "assistant", "content": [b.model_dump() for b in message.content]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": "a pen"}
                    ],
                },
            ]
            answer = await client.messages.create(
                model="m", max_tokens=200, tools=[TOOL], messages=follow_up
            )
            assert answer.stop_reason == "end_turn"
            assert answer.content[0].type == "text"
            assert answer.content[0].text.startswith("[vllm-a]")
        path = "/v1/messages" if native else "/v1/chat/completions"
        assert len(fake.requests_to(path)) == 3


async def test_errors_are_anthropic_shaped(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Unknown model, bad body, no key, backend errors: Anthropic-shaped, the SDK's exceptions."""
    async with running_fakes(FakeServer("vllm", ["m"], "vllm-a")) as (fake,):
        running = await edge_for(
            snapshots, start_edge, [typed(fake)], api_keys=(Secret("sk-edge"),)
        )
        async with sdk(running, "sk-edge") as client:
            with pytest.raises(anthropic.NotFoundError) as missing:
                await client.messages.create(
                    model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
            assert missing.value.body["type"] == "error"
            assert missing.value.body["error"]["type"] == "not_found_error"

            fake.mode = "error"
            with pytest.raises(anthropic.InternalServerError):
                await client.messages.create(
                    model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
            fake.mode = "ok"

            counted = await client.messages.count_tokens(
                model="m", messages=[{"role": "user", "content": "count these words please"}]
            )
            assert counted.input_tokens > 0
        async with sdk(running, "wrong") as client:
            with pytest.raises(anthropic.AuthenticationError):
                await client.messages.create(
                    model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
        async with http.post(
            f"{running.url}/v1/messages",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": "sk-edge"},
        ) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in body["error"]["message"]


async def test_failover_when_a_backend_is_dead(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """With one of two backends dead, the live one answers every message, plain and streamed."""
    async with running_fakes(
        FakeServer("vllm", ["m"], "vllm-a"),
        FakeServer("llamacpp", ["m"], "llamacpp-b", anthropic_native=True),
    ) as (dead, live):
        running = await edge_for(snapshots, start_edge, [typed(dead), typed(live)])
        await dead.stop()
        async with sdk(running) as client:
            for i in range(6):
                ask = [{"role": "user", "content": f"conversation {i}"}]
                message = await client.messages.create(model="m", max_tokens=50, messages=ask)
                assert message.content[0].text == f"[llamacpp-b] conversation {i}"
                async with client.messages.stream(model="m", max_tokens=50, messages=ask) as s:
                    final = await s.get_final_message()
                assert final.content[0].text == f"[llamacpp-b] conversation {i}"
        assert len(live.requests_to("/v1/messages")) == 12


async def test_alias_across_native_and_translated(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """An alias over native and translating backends: own model names, sticky, both get some."""
    async with running_fakes(
        FakeServer("ollama", ["gemma3:4b"], "ollama-a", anthropic_native=True),
        FakeServer("vllm", ["google/gemma-3-4b-it"], "vllm-b"),
    ) as (ollama_fake, vllm_fake):
        running = await edge_for(
            snapshots,
            start_edge,
            [typed(ollama_fake), typed(vllm_fake)],
            aliases={"gemma": ["gemma3:4b", "google/gemma-3-4b-it"]},
        )
        served: dict[int, str] = {}
        async with sdk(running) as client:
            for i in range(12):
                ask = [{"role": "user", "content": f"topic {i}"}]
                for _turn in range(2):
                    raw = await client.messages.with_raw_response.create(
                        model="gemma", max_tokens=50, messages=ask
                    )
                    message = await raw.parse()
                    backend = raw.headers["x-corral-backend"]
                    assert served.setdefault(i, backend) == backend  # sticky
                    assert message.model == "gemma"  # the name asked for, from either
                    said = ask[-1]["content"]
                    assert message.content[0].text == f"[{backend}] {said}"
                    ask = [
                        *ask,
                        {"role": "assistant", "content": message.content[0].text},
                        {"role": "user", "content": "go on"},
                    ]
            streamed_by = set()
            for i in range(8):
                async with client.messages.stream(
                    model="gemma", max_tokens=50, messages=[{"role": "user", "content": f"s {i}"}]
                ) as stream:
                    final = await stream.get_final_message()
                    streamed_by.add(stream.response.headers["x-corral-backend"])
                assert final.model == "gemma"
            assert streamed_by == {"ollama-a", "vllm-b"}
        assert set(served.values()) == {"ollama-a", "vllm-b"}
        assert {r.body_json["model"] for r in ollama_fake.requests_to("/v1/messages")} == {
            "gemma3:4b"
        }
        assert {r.body_json["model"] for r in vllm_fake.requests_to("/v1/chat/completions")} == {
            "google/gemma-3-4b-it"
        }


@pytest.mark.parametrize("native", [False, True])
async def test_stream_cut_midway_ends_with_error_event(
    snapshots: SnapshotServer, start_edge: StartEdge, native: bool
) -> None:
    """A backend dying mid-stream isn't retried: the SDK gets an Anthropic `error` event, raises."""
    async with running_fakes(
        FakeServer("vllm", ["m"], "a", anthropic_native=native),
        FakeServer("vllm", ["m"], "b", anthropic_native=native),
    ) as fakes:
        for fake in fakes:
            fake.stream_chunks = 20
            fake.chunk_delay = 0.05
        running = await edge_for(snapshots, start_edge, [typed(f) for f in fakes])
        async with sdk(running) as client:
            with pytest.raises(anthropic.APIError) as cut:
                async with client.messages.stream(
                    model="m",
                    max_tokens=100,
                    messages=[{"role": "user", "content": "one two three four five six"}],
                ) as stream:
                    victim = {f.name: f for f in fakes}[stream.response.headers["x-corral-backend"]]
                    async for event in stream:
                        if event.type == "content_block_delta":
                            await victim.stop()
            assert "interrupted" in str(cut.value)
        assert sum(len(f.requests) for f in fakes) == 1  # nothing was retried


async def test_agents_learn_who_speaks_messages(etcd: EtcdCluster, start_edge: StartEdge) -> None:
    """Agents report backends that speak Messages; the edge goes native to them, else translates."""
    # Agents report every second; a lease outlives three missed reports.
    cfg = h.etcd_config(etcd.endpoints, lease_ttl_seconds=6.0, heartbeat_interval_seconds=1.0)
    async with (
        running_fakes(
            FakeServer("llamacpp", ["native-m"], "llamacpp-n", anthropic_native=True),
            FakeServer("vllm", ["openai-m"], "vllm-t"),
        ) as fakes,
        h.running(cfg) as address,
        running_agents(address, fakes),
    ):
        running = await start_edge(None, controlplane=(address,))
        watcher = h.SnapshotWatcher(address)
        try:
            learnt = await watcher.until(_native_learnt)
        finally:
            await watcher.close()
        await running.wait_version(learnt.version)
        native, translated = fakes
        async with sdk(running) as client:
            for fake, model in ((native, "native-m"), (translated, "openai-m")):
                message = await client.messages.create(
                    model=model,
                    max_tokens=50,
                    messages=[{"role": "user", "content": "through the agents"}],
                )
                assert message.content[0].text == f"[{fake.name}] through the agents"

        def asked(fake: FakeServer, path: str) -> int:
            return sum("through the agents" in str(r.body_json) for r in fake.requests_to(path))

        assert asked(native, "/v1/messages") == 1
        assert asked(native, "/v1/chat/completions") == 0
        assert asked(translated, "/v1/chat/completions") == 1
        assert asked(translated, "/v1/messages") == 0


@pytest.mark.parametrize("native", [False, True])
async def test_max_tokens_capped_to_the_context(
    snapshots: SnapshotServer, start_edge: StartEdge, native: bool
) -> None:
    """Asking more tokens than the context leaves after the prompt gets the rest, not a refusal."""
    # Claude Code asks for 32,000.
    async with running_fakes(FakeServer("vllm", ["small"], "vllm-a", anthropic_native=native)) as (
        fake,
    ):
        backend = typed(fake)
        backend.status.models[0].context_length = 4096
        running = await edge_for(snapshots, start_edge, [backend])
        async with sdk(running) as client:
            for asked in (32_000, 100):
                async with client.messages.stream(
                    model="small", max_tokens=asked, messages=[{"role": "user", "content": "hi"}]
                ) as stream:
                    await stream.get_final_message()
        path = "/v1/messages" if native else "/v1/chat/completions"
        capped, untouched = (r.body_json["max_tokens"] for r in fake.requests_to(path))
        assert 4000 < capped < 4096
        assert untouched == 100


def _native_learnt(snap: types_pb2.Snapshot) -> bool:
    """Both backends healthy, and the native one reported as speaking Messages."""
    by_name = {b.spec.name: b for b in snap.backends}
    healthy = all(
        name in by_name and by_name[name].status.health == types_pb2.HEALTH_STATE_HEALTHY
        for name in ("llamacpp-n", "vllm-t")
    )
    return healthy and (
        types_pb2.CAPABILITY_ANTHROPIC_MESSAGES in by_name["llamacpp-n"].status.capabilities
    )
