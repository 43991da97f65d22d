"""The official `anthropic` SDK against a translating server on loopback (edge/anthropic/):
the SDK's own parser and stream accumulator are the judges of the Messages and events we
write; create, stream, tool round trips, errors and count_tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import pytest
from aiohttp import web

from tests.edge.anthropic_support import (
    MODEL,
    TEXT_CHUNKS,
    TOOL_CHUNKS,
    WEATHER_TOOLS,
    chunk,
    completion,
    serve,
    sse_bytes,
    translating_app,
)


@dataclass
class Backend:
    """A scripted OpenAI-compatible backend: the next answer, and what it was asked."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    completion: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    finish_stream: bool = True
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self.requests.append(payload)
        if not payload.get("stream"):
            return web.json_response(self.completion)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        data = sse_bytes(self.chunks, done=self.finish_stream)
        # Small, odd-sized writes so events straddle network reads.
        for offset in range(0, len(data), 7):
            await response.write(data[offset : offset + 7])
        await response.write_eof()
        return response


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[anthropic.AsyncAnthropic, Backend]]:
    backend = Backend()
    backend_app = web.Application()
    backend_app.router.add_post("/v1/chat/completions", backend.handle)
    backend_runner, backend.url = await serve(backend_app)
    proxy_runner, proxy_url = await serve(translating_app(backend))
    client = anthropic.AsyncAnthropic(base_url=proxy_url, api_key="test-key", max_retries=0)
    try:
        yield client, backend
    finally:
        await client.close()
        await proxy_runner.cleanup()
        await backend_runner.cleanup()


SdkFixture = tuple[anthropic.AsyncAnthropic, Backend]


async def test_sdk_create_text(sdk: SdkFixture) -> None:
    """messages.create parses the translated Message; the backend saw the translated request."""
    client, backend = sdk
    backend.completion = completion({"role": "assistant", "content": "Bonjour"}, "stop")
    message = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.model == MODEL
    assert message.role == "assistant" and message.type == "message"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Bonjour"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 7)
    assert backend.requests[-1]["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
    ]
    assert backend.requests[-1]["model"] == "backend-model"


async def test_sdk_create_tool_use_round_trip(sdk: SdkFixture) -> None:
    """A tool call comes back as a ToolUseBlock; its result goes back as a tool message."""
    client, backend = sdk
    backend.completion = completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        "tool_calls",
    )
    question: Any = {"role": "user", "content": "Weather in Oslo?"}
    first = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=WEATHER_TOOLS,
        tool_choice={"type": "any"},
        messages=[question],
    )
    assert first.stop_reason == "tool_use"
    tool_use = first.content[0]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == (
        "call_w",
        "get_weather",
        {"city": "Oslo"},
    )
    assert backend.requests[-1]["tool_choice"] == "required"
    assert backend.requests[-1]["tools"][0]["function"]["name"] == "get_weather"

    backend.completion = completion({"role": "assistant", "content": "It is 3C."}, "stop")
    second = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=WEATHER_TOOLS,
        messages=[
            question,
            first.to_param(),
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_w", "content": "3C"}],
            },
        ],
    )
    assert second.content[0].text == "It is 3C."
    sent = backend.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_w"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_w", "content": "3C"}


async def test_sdk_stream_text(sdk: SdkFixture) -> None:
    """messages.stream accumulates the translated events into the right final Message."""
    client, backend = sdk
    backend.chunks = TEXT_CHUNKS
    pieces = []
    async with client.messages.stream(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        async for text in stream.text_stream:
            pieces.append(text)
        final = await stream.get_final_message()
    assert pieces == ["Hello", ", wörld", "!"]
    assert final.content[0].text == "Hello, wörld!"
    assert final.stop_reason == "end_turn"
    assert final.model == MODEL
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 4)
    assert backend.requests[-1]["stream"] is True
    assert backend.requests[-1]["stream_options"] == {"include_usage": True}


async def test_sdk_stream_parallel_tool_calls(sdk: SdkFixture) -> None:
    """Streamed argument fragments of two tool calls accumulate into two complete inputs."""
    client, backend = sdk
    backend.chunks = TOOL_CHUNKS
    async with client.messages.stream(
        model=MODEL,
        max_tokens=50,
        tools=WEATHER_TOOLS,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    text, weather, clock = final.content
    assert text.text == "Let me check."
    assert (weather.id, weather.name, weather.input) == (
        "call_a",
        "get_weather",
        {"city": "Paris", "days": 2},
    )
    assert (clock.name, clock.input) == ("get_time", {"tz": "CET"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 25)


async def test_sdk_create_stream_raw_events(sdk: SdkFixture) -> None:
    """messages.create(stream=True) yields typed raw events in Anthropic's order."""
    client, backend = sdk
    backend.chunks = TEXT_CHUNKS
    stream = await client.messages.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1


async def test_sdk_sees_anthropic_errors(sdk: SdkFixture) -> None:
    """A bad request is a BadRequestError with Anthropic's body; a cut stream raises mid-stream."""
    client, backend = sdk
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=[{"role": "system", "content": "x"}],
        )
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.0.role: Input should be 'user' or 'assistant'",
        },
    }
    backend.chunks = [chunk({"content": "half an ans"})]
    backend.finish_stream = False
    with pytest.raises(anthropic.APIStatusError) as streamed:
        async with client.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            await stream.get_final_message()
    assert "mid-answer" in str(streamed.value)


async def test_sdk_count_tokens(sdk: SdkFixture) -> None:
    """messages.count_tokens gets the estimate in Anthropic's shape."""
    client, _ = sdk
    result = await client.messages.count_tokens(
        model=MODEL, system="s" * 8, messages=[{"role": "user", "content": "x" * 40}]
    )
    assert result.input_tokens == 12 + 4
