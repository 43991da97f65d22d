"""The inference-server fakes speak each server's real API to the official clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import ollama
import openai
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
        base_url=fake.url + "/v1",
        api_key="unused",
        max_retries=0,
        **options,  # type: ignore[arg-type]
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
    assert any_fake.requests_to("/v1/chat/completions")[0].body_json["model"] == MODEL


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
    """A model the backend does not serve gets 404 with an OpenAI error body."""
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
            any_fake.url + "/v1/chat/completions",
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
