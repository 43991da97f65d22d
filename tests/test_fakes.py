"""The inference-server fakes speak each server's real API to the official clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import ollama
import openai
import orjson
import pytest
import pytest_asyncio

from tests.fakes import KINDS, FakeModel, FakeServer, running_fakes
from tests.fakes.pytest_plugin import fake_server  # noqa: F401 (a fixture used by name)

MODEL = "org/model-a"


@pytest_asyncio.fixture(params=KINDS)
async def any_fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    async with FakeServer(request.param, models=[MODEL], name=f"{request.param}-a") as fake:
        yield fake


_clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic | ollama.AsyncClient] = []


def client(fake: FakeServer, **options: object) -> openai.AsyncOpenAI:
    """An OpenAI SDK client for the fake, closed after the test."""
    api = openai.AsyncOpenAI(
        base_url=fake.openai_url,
        api_key="unused",
        max_retries=0,
        **options,
    )
    _clients.append(api)
    return api


@pytest_asyncio.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


async def test_openai_chat_non_streaming(any_fake: FakeServer) -> None:
    """A chat completion echoes the last user message and names the backend in a header."""
    raw = await client(any_fake).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hello there"},
        ],
    )
    assert raw.headers["x-fake-backend"] == any_fake.name
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == f"[{any_fake.name}] hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    path = any_fake.openai_url.removeprefix(any_fake.url) + "/chat/completions"
    assert any_fake.requests_to(path)[0].body_json["model"] == MODEL


async def test_openai_chat_streaming(any_fake: FakeServer) -> None:
    """A streamed chat arrives as role, stream_chunks content deltas, stop, usage, [DONE]."""
    any_fake.stream_chunks = 4
    stream = await client(any_fake).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == 4
    assert "".join(pieces) == f"[{any_fake.name}] stream me please"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert any_fake.completed == 1 and any_fake.cancelled == 0


async def test_openai_completions_embeddings_models(any_fake: FakeServer) -> None:
    """Completions echo the prompt; embeddings are deterministic; models list the served one."""
    api = client(any_fake)
    completion = await api.completions.create(model=MODEL, prompt="say hi")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == f"[{any_fake.name}] say hi"
    streamed = await api.completions.create(model=MODEL, prompt="say hi", stream=True)
    assert "".join([c.choices[0].text async for c in streamed]) == f"[{any_fake.name}] say hi"

    # The SDK asks for base64 by default; ask for floats too and compare.
    first = await api.embeddings.create(model=MODEL, input=["alpha", "beta"])
    floats = await api.embeddings.create(model=MODEL, input="alpha", encoding_format="float")
    assert [d.index for d in first.data] == [0, 1]
    assert first.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    assert first.data[0].embedding != first.data[1].embedding

    models = [m async for m in api.models.list()]
    expected = MODEL + ":latest" if any_fake.kind == "ollama" else MODEL
    assert [m.id for m in models] == [expected]


async def test_unknown_model_is_404(any_fake: FakeServer) -> None:
    """A model the backend does not serve gets 404 with an OpenAI error body (TGI, which
    serves its one model whatever the name, answers with it)."""
    if any_fake.kind == "tgi":
        reply = await client(any_fake).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == f"[{any_fake.name}] hi"
        return
    with pytest.raises(openai.NotFoundError) as caught:
        await client(any_fake).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 404
    body = caught.value.body
    assert isinstance(body, dict) and "nope" in body["message"]


async def test_invalid_json_is_400(any_fake: FakeServer) -> None:
    """A body that is not JSON gets 400 with an error object."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            any_fake.openai_url + "/chat/completions",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 400
        assert "error" in await response.json()
        assert response.headers["X-Fake-Backend"] == any_fake.name


async def test_error_mode_answers_500(any_fake: FakeServer) -> None:
    """In error mode every request gets a 500 with an error body."""
    any_fake.mode = "error"
    with pytest.raises(openai.InternalServerError) as caught:
        await client(any_fake).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 500


async def test_overloaded_mode(any_fake: FakeServer) -> None:
    """Overloaded backends refuse inference with 429 (Ollama: 503) but still list models."""
    any_fake.mode = "overloaded"
    expected = openai.InternalServerError if any_fake.kind == "ollama" else openai.RateLimitError
    with pytest.raises(expected) as caught:
        await client(any_fake).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == (503 if any_fake.kind == "ollama" else 429)
    assert [m.id async for m in client(any_fake).models.list()]


async def test_hang_mode_times_out_then_answers_after_mode_change(fake_server) -> None:  # noqa: F811 (fixture)
    """A hanging backend never answers (the client times out) until its mode changes."""
    fake = await fake_server("vllm", models=[MODEL], name="hung")
    fake.mode = "hang"
    with pytest.raises(openai.APITimeoutError):
        await client(fake, timeout=0.2).models.list()
    pending = asyncio.ensure_future(client(fake).models.list())
    await fake.wait_requests(2)
    assert not pending.done()
    fake.mode = "ok"
    page = await pending
    assert [m.id for m in page.data] == [MODEL]


async def test_llamacpp_loading_mode(fake_server) -> None:  # noqa: F811 (fixture)
    """llama.cpp answers /health 503 "Loading model" while loading, then 200 {"status": "ok"}."""
    fake = await fake_server("llamacpp", models=[MODEL])
    fake.mode = "loading"
    async with aiohttp.ClientSession() as session:
        async with session.get(fake.url + "/health") as response:
            assert response.status == 503
            assert await response.json() == {
                "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            }
        fake.mode = "ok"
        async with session.get(fake.url + "/health") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}


async def test_stop_breaks_an_open_stream_and_restart_keeps_the_port(fake_server) -> None:  # noqa: F811
    """stop() cuts a client mid-stream like a killed process; start() comes back on the same URL."""
    fake = await fake_server("vllm", models=[MODEL], name="killed")
    url = fake.url
    fake.chunk_delay = 60.0  # the stream stalls after its first chunk until the kill
    stream = await client(fake).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    iterator = stream.__aiter__()
    first = await iterator.__anext__()
    assert first.choices[0].delta.role == "assistant"
    await fake.stop()
    with pytest.raises(openai.APIConnectionError):
        await iterator.__anext__()
    assert fake.cancelled == 0  # a kill is not a client cancellation
    with pytest.raises(openai.APIConnectionError):
        await client(fake).models.list()

    await fake.start()
    assert fake.url == url
    fake.chunk_delay = 0.0
    reply = await client(fake).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "back?"}]
    )
    assert reply.choices[0].message.content == "[killed] back?"


async def test_client_disconnect_counts_cancelled(fake_server) -> None:  # noqa: F811 (fixture)
    """A client that drops a stream before its end shows up in `cancelled`, not `inflight`."""
    fake = await fake_server("sglang", models=[MODEL])
    fake.chunk_delay = 60.0
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            fake.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        assert (await response.content.readline()).startswith(b"data: ")
        assert fake.inflight == 1
        response.close()
    await fake.wait_until(lambda: fake.cancelled == 1 and fake.inflight == 0)


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


async def test_running_fakes_starts_and_stops_all() -> None:
    """running_fakes starts every fake and stops them all on exit."""
    async with running_fakes(
        FakeServer("openai", name="one"), FakeServer("vllm", models=[FakeModel("m")], name="two")
    ) as (one, two):
        assert one.running and two.running and one.url != two.url
    assert not one.running and not two.running


async def http(
    fake: FakeServer, method: str, path: str, json: object = None
) -> tuple[int, str, bytes]:
    """One raw request: (status, content type, body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, fake.url + path, json=json) as response,
    ):
        assert response.headers["X-Fake-Backend"] == fake.name
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def metric(text: bytes, name: str) -> float:
    """The value of the first sample of `name` in Prometheus text."""
    for line in text.decode().splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text.decode()}")


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


async def test_load_rises_with_inflight_requests(fake_server) -> None:  # noqa: F811 (fixture)
    """Held requests count in `inflight` and in the reported running load until released."""
    fake = await fake_server("vllm", models=[MODEL])
    fake.set_load(running=1)
    fake.hold()
    api = client(fake)
    calls = [
        asyncio.ensure_future(
            api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        )
        for _ in range(2)
    ]
    await fake.wait_inflight(2)
    assert metric((await http(fake, "GET", "/metrics"))[2], "vllm:num_requests_running") == 3
    fake.release()
    replies = await asyncio.gather(*calls)
    assert all(r.choices[0].message.content == f"[{fake.name}] x" for r in replies)
    assert fake.inflight == 0 and fake.completed == 2
    assert metric((await http(fake, "GET", "/metrics"))[2], "vllm:num_requests_running") == 1


async def test_cancelled_counts_a_dropped_held_request(fake_server) -> None:  # noqa: F811
    """A client that gives up on a held (not yet answered) request counts as cancelled."""
    fake = await fake_server("openai", models=[MODEL])
    fake.hold()
    async with aiohttp.ClientSession() as session:
        call = asyncio.ensure_future(
            session.post(
                fake.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            )
        )
        await fake.wait_inflight(1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await fake.wait_until(lambda: fake.cancelled == 1 and fake.inflight == 0)
    assert fake.completed == 0


async def test_stop_ends_hanging_requests(fake_server) -> None:  # noqa: F811 (fixture)
    """stop() in hang mode drops the hung connection and returns."""
    fake = await fake_server("sglang", models=[MODEL])
    fake.mode = "hang"
    pending = asyncio.ensure_future(client(fake).models.list())
    await fake.wait_requests(1)
    await fake.stop()
    with pytest.raises(openai.APIConnectionError):
        await pending


async def test_context_length_is_enforced(fake_server) -> None:  # noqa: F811 (fixture)
    """A prompt longer than the model's context gets a 400 naming the limit."""
    fake = await fake_server("vllm", models=[FakeModel(MODEL, context_length=4)])
    with pytest.raises(openai.BadRequestError) as caught:
        await client(fake).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "one two three four five"}]
        )
    assert "maximum context length is 4 tokens" in str(caught.value)


async def test_openai_tool_calls(fake_server) -> None:  # noqa: F811 (fixture)
    """Offered tools are called (streamed too); a tool result is echoed back as text."""
    fake = await fake_server("vllm", models=[MODEL], name="tooly")
    api = client(fake)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    messages: list[dict[str, object]] = [{"role": "user", "content": "find cats"}]
    reply = await api.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup"
    assert orjson.loads(call.function.arguments) == {"text": "find cats"}

    stream = await api.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, stream=True
    )
    arguments = ""
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            arguments += delta.function.arguments or ""
    assert orjson.loads(arguments) == {"text": "find cats"}

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "3 cats"},
    ]
    final = await api.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    assert final.choices[0].message.content == "[tooly] 3 cats"


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


async def test_requests_are_recorded(fake_server) -> None:  # noqa: F811 (fixture)
    """Every request is recorded with method, path, headers and JSON body."""
    fake = await fake_server("openai", models=[MODEL])
    await client(fake).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "rec"}], extra_headers={"X-Trace": "t1"}
    )
    await http(fake, "GET", "/v1/models")
    chat, models = fake.requests
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.headers["x-trace"] == "t1" and chat.headers["Authorization"] == "Bearer unused"
    assert chat.body_json["messages"] == [{"role": "user", "content": "rec"}]
    assert (models.method, models.path, models.body_json) == ("GET", "/v1/models", None)
