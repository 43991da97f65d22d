"""The fakes speak each server's own API too: the ollama client and Ollama's native API,
Anthropic Messages (and tool use) to the anthropic SDK, vLLM's, SGLang's and llama.cpp's probes
and metrics, LM Studio's model states.
"""

from __future__ import annotations

import anthropic
import ollama
import orjson
import pytest

from tests.fakes import FakeModel
from tests.fakes.pytest_plugin import fake_server  # noqa: F401 (a fixture used by name)
from tests.support.fake_clients import (
    MODEL,
    _clients,
    _close_clients,  # noqa: F401 (an autouse fixture)
    http,
    metric,
)


async def test_ollama_client_chat_stream_and_list(fake_server) -> None:  # noqa: F811 (fixture)
    """The official ollama client streams a chat and lists models against the Ollama fake."""
    fake = await fake_server("ollama", models=["llama3.2", "qwen3:8b"], name="olla")
    api = ollama.AsyncClient(host=fake.url)
    _clients.append(api)
    parts = [
        part.message.content
        async for part in await api.chat(
            model="llama3.2", messages=[{"role": "user", "content": "hello"}], stream=True
        )
    ]
    assert "".join(parts) == "[olla] hello"
    listed = await api.list()
    assert [m.model for m in listed.models] == ["llama3.2:latest", "qwen3:8b"]
    assert listed.models[0].details is not None
    assert listed.models[0].details.quantization_level == "Q4_K_M"
    reply = await api.chat(model="qwen3:8b", messages=[{"role": "user", "content": "yo"}])
    assert reply.message.content == "[olla] yo" and reply.done
    with pytest.raises(ollama.ResponseError) as caught:
        await api.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    fake.unload_model("qwen3:8b")
    running = await api.ps()
    assert [m.model for m in running.models] == ["llama3.2:latest"]
    assert running.models[0].size_vram and running.models[0].context_length
    tool = {"type": "function", "function": {"name": "clock", "parameters": {}}}
    called = await api.chat(
        model="llama3.2", messages=[{"role": "user", "content": "time?"}], tools=[tool]
    )
    assert called.message.tool_calls is not None
    assert called.message.tool_calls[0].function.name == "clock"
    assert called.message.tool_calls[0].function.arguments == {"text": "time?"}


async def test_anthropic_sdk_messages(fake_server) -> None:  # noqa: F811 (fixture)
    """With anthropic_native, the anthropic SDK gets messages, streamed and not."""
    fake = await fake_server("vllm", models=[MODEL], name="claude-ish", anthropic_native=True)
    api = anthropic.AsyncAnthropic(base_url=fake.url, api_key="unused", max_retries=0)
    _clients.append(api)
    message = await api.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "bonjour"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "[claude-ish] bonjour"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    async with api.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "salut"}]
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) == fake.stream_chunks
    assert "".join(texts) == "[claude-ish] salut"
    assert final.stop_reason == "end_turn"
    fake.anthropic_native = False
    with pytest.raises(anthropic.NotFoundError):
        await api.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )


async def test_ollama_native_api(fake_server) -> None:  # noqa: F811 (fixture)
    """Ollama's own endpoints: root, version, tags, ps, show, generate, embed, load/unload."""
    fake = await fake_server(
        "ollama", models=["llama3.2", FakeModel("nomic-embed-text", context_length=2048)]
    )
    assert await http(fake, "GET", "/") == (200, "text/plain; charset=utf-8", b"Ollama is running")
    assert (await http(fake, "HEAD", "/"))[0] == 200
    status, _, body = await http(fake, "GET", "/api/version")
    assert status == 200 and "version" in orjson.loads(body)

    tags = orjson.loads((await http(fake, "GET", "/api/tags"))[2])["models"]
    assert {t["name"] for t in tags} == {"llama3.2:latest", "nomic-embed-text:latest"}
    assert set(tags[0]) >= {"name", "model", "modified_at", "size", "digest", "details"}
    assert set(tags[0]["details"]) >= {"format", "family", "parameter_size", "quantization_level"}

    fake.unload_model("nomic-embed-text")
    loaded = orjson.loads((await http(fake, "GET", "/api/ps"))[2])["models"]
    assert [m["name"] for m in loaded] == ["llama3.2:latest"]
    assert set(loaded[0]) >= {"size_vram", "context_length", "expires_at"}

    show = orjson.loads((await http(fake, "POST", "/api/show", {"model": "nomic-embed-text"}))[2])
    assert show["model_info"]["llama.context_length"] == 2048

    # Embedding loads the model on demand, as Ollama does.
    status, _, body = await http(
        fake, "POST", "/api/embed", {"model": "nomic-embed-text", "input": ["a", "b"]}
    )
    assert status == 200 and len(orjson.loads(body)["embeddings"]) == 2
    assert fake.model("nomic-embed-text").loaded

    # An empty prompt with keep_alive 0 unloads, as `ollama stop` does.
    status, _, body = await http(
        fake, "POST", "/api/generate", {"model": "llama3.2", "keep_alive": 0}
    )
    assert orjson.loads(body)["done_reason"] == "unload"
    assert not fake.model("llama3.2").loaded

    status, content_type, body = await http(
        fake, "POST", "/api/generate", {"model": "llama3.2", "prompt": "why"}
    )
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert content_type == "application/x-ndjson"
    assert "".join(line["response"] for line in lines) == f"[{fake.name}] why"
    assert [line["done"] for line in lines][-1] is True and lines[-1]["done_reason"] == "stop"
    status, _, body = await http(
        fake, "POST", "/api/generate", {"model": "llama3.2", "prompt": "why", "stream": False}
    )
    assert orjson.loads(body)["response"] == f"[{fake.name}] why"

    status, _, body = await http(fake, "POST", "/api/chat", {"model": "gone", "messages": []})
    assert status == 404 and orjson.loads(body) == {
        "error": 'model "gone" not found, try pulling it first'
    }
    fake.mode = "overloaded"
    status, _, body = await http(
        fake, "POST", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user"}]}
    )
    assert status == 503 and "server busy" in orjson.loads(body)["error"]


async def test_vllm_probes_and_metrics(fake_server) -> None:  # noqa: F811 (fixture)
    """vLLM: /health, /version, /v1/models with max_model_len, /metrics from set_load."""
    fake = await fake_server("vllm", models=[FakeModel(MODEL, context_length=32768)])
    status, _, body = await http(fake, "GET", "/health")
    assert (status, body) == (200, b"")
    assert "version" in orjson.loads((await http(fake, "GET", "/version"))[2])
    entry = orjson.loads((await http(fake, "GET", "/v1/models"))[2])["data"][0]
    assert entry["id"] == entry["root"] == MODEL
    assert entry["object"] == "model" and entry["owned_by"] == "vllm"
    assert entry["max_model_len"] == 32768

    fake.set_load(running=2, waiting=3, kv_cache_usage=0.4)
    status, content_type, text = await http(fake, "GET", "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 2.0' in text.decode()
    assert metric(text, "vllm:num_requests_waiting") == 3
    assert metric(text, "vllm:kv_cache_usage_perc") == 0.4


async def test_sglang_probes_and_metrics(fake_server) -> None:  # noqa: F811 (fixture)
    """SGLang: /health, /get_model_info, /v1/models, /metrics from set_load."""
    fake = await fake_server("sglang", models=[FakeModel(MODEL, context_length=4096)])
    assert (await http(fake, "GET", "/health"))[0] == 200
    info = orjson.loads((await http(fake, "GET", "/get_model_info"))[2])
    assert info["model_path"] == MODEL and info["is_generation"] is True
    entry = orjson.loads((await http(fake, "GET", "/v1/models"))[2])["data"][0]
    assert entry["owned_by"] == "sglang" and entry["max_model_len"] == 4096
    fake.set_load(running=1, waiting=4, kv_cache_usage=0.25)
    text = (await http(fake, "GET", "/metrics"))[2]
    assert metric(text, "sglang:num_running_reqs") == 1
    assert metric(text, "sglang:num_queue_reqs") == 4
    assert metric(text, "sglang:token_usage") == 0.25
    assert f'model_name="{MODEL}"' in text.decode()


async def test_llamacpp_probes_slots_and_metrics(fake_server) -> None:  # noqa: F811 (fixture)
    """llama.cpp: /props, /slots and /metrics follow the load; /metrics can be disabled."""
    fake = await fake_server("llamacpp", models=[FakeModel(MODEL, context_length=16384)])
    fake.total_slots = 2
    props = orjson.loads((await http(fake, "GET", "/props"))[2])
    assert props["total_slots"] == 2 and props["model_path"] == MODEL
    assert props["default_generation_settings"]["n_ctx"] == 16384
    entry = orjson.loads((await http(fake, "GET", "/v1/models"))[2])["data"][0]
    assert entry["owned_by"] == "llamacpp" and entry["meta"]["n_ctx_train"] == 16384

    fake.set_load(running=1, waiting=2)
    slots = orjson.loads((await http(fake, "GET", "/slots"))[2])
    assert [(s["id"], s["is_processing"]) for s in slots] == [(0, True), (1, False)]
    text = (await http(fake, "GET", "/metrics"))[2]
    assert metric(text, "llamacpp:requests_processing") == 1
    assert metric(text, "llamacpp:requests_deferred") == 2
    fake.set_load(running=2)
    assert (await http(fake, "GET", "/slots?fail_on_no_slot=1"))[0] == 503

    fake.metrics_enabled = False
    assert (await http(fake, "GET", "/metrics"))[0] == 501
    # Also without the /v1 prefix, as llama.cpp serves it.
    status, _, body = await http(
        fake, "POST", "/chat/completions", {"messages": [{"role": "user", "content": "hey"}]}
    )
    assert status == 200
    assert orjson.loads(body)["choices"][0]["message"]["content"] == f"[{fake.name}] hey"


async def test_lmstudio_models_state(fake_server) -> None:  # noqa: F811 (fixture)
    """LM Studio: /api/v0/models shows loaded/not-loaded; a request loads a model (JIT)."""
    fake = await fake_server(
        "lmstudio",
        models=[
            FakeModel("qwen/qwen3-8b", context_length=32768),
            FakeModel("text-embedding-nomic", embedding=True, loaded=False),
        ],
    )
    data = orjson.loads((await http(fake, "GET", "/api/v0/models"))[2])["data"]
    assert [(m["id"], m["type"], m["state"]) for m in data] == [
        ("qwen/qwen3-8b", "llm", "loaded"),
        ("text-embedding-nomic", "embeddings", "not-loaded"),
    ]
    assert data[0]["publisher"] == "qwen" and data[0]["max_context_length"] == 32768
    assert set(data[0]) >= {"arch", "compatibility_type", "quantization"}
    fake.unload_model("qwen/qwen3-8b")
    single = orjson.loads((await http(fake, "GET", "/api/v0/models/qwen/qwen3-8b"))[2])
    assert single["state"] == "not-loaded"

    status, _, body = await http(
        fake,
        "POST",
        "/api/v0/chat/completions",
        {"model": "qwen/qwen3-8b", "messages": [{"role": "user", "content": "hi"}]},
    )
    reply = orjson.loads(body)
    assert status == 200 and reply["choices"][0]["message"]["content"] == f"[{fake.name}] hi"
    assert "stats" in reply and reply["model_info"]["context_length"] == 32768
    assert fake.model("qwen/qwen3-8b").loaded


async def test_anthropic_tool_use(fake_server) -> None:  # noqa: F811 (fixture)
    """A native Messages backend answers tool_use, then echoes the tool_result."""
    fake = await fake_server("llamacpp", models=[MODEL], name="toolc", anthropic_native=True)
    api = anthropic.AsyncAnthropic(base_url=fake.url, api_key="unused", max_retries=0)
    _clients.append(api)
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    first = await api.messages.create(
        model=MODEL,
        max_tokens=32,
        tools=tools,
        messages=[{"role": "user", "content": "Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "weather" and use.input == {"text": "Paris?"}
    async with api.messages.stream(
        model=MODEL, max_tokens=32, tools=tools, messages=[{"role": "user", "content": "Paris?"}]
    ) as stream:
        streamed = await stream.get_final_message()
    assert streamed.content[0].type == "tool_use" and streamed.content[0].input == use.input
    second = await api.messages.create(
        model=MODEL,
        max_tokens=32,
        tools=tools,
        messages=[
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": [use.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].text == "[toolc] sunny"
