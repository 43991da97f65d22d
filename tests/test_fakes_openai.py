"""Every inference-server fake speaks the OpenAI API to the official openai SDK: chat (streamed
and not), completions, embeddings, models, tool calls, 404s, 400s, error and overloaded modes,
and every request recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio

from tests.fakes import KINDS, FakeServer
from tests.fakes.pytest_plugin import fake_server  # noqa: F401 (a fixture used by name)
from tests.support.fake_clients import (
    MODEL,
    _close_clients,  # noqa: F401 (an autouse fixture)
    client,
    http,
)


@pytest_asyncio.fixture(params=KINDS)
async def any_fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    async with FakeServer(request.param, models=[MODEL], name=f"{request.param}-a") as fake:
        yield fake


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
    """An unserved model is a 404 with an OpenAI error body (TGI answers with its one model)."""
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
