"""What the Anthropic translation tests share: request bodies, OpenAI chunks and completions,
the SSE bytes of a chunk stream, Anthropic events checked against the SDK's types, and a small
translating server on loopback (what the edge does for a backend without native Messages).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pydantic
from aiohttp import ClientSession, web
from anthropic.types import RawMessageStreamEvent

from edge.anthropic import (
    AnthropicError,
    SSEParser,
    StreamTranslator,
    api_error,
    count_tokens,
    count_tokens_response,
    from_openai_response,
    to_openai_request,
    validate_count_tokens_request,
    validate_messages_request,
)

MODEL = "claude-local"
EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return base


def parse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an Anthropic SSE byte string, checked against the SDK types."""
    out = []
    for message in SSEParser().feed(data):
        assert message.event is not None
        payload = json.loads(message.data)
        assert payload["type"] == message.event
        if message.event not in ("ping", "error"):
            EVENTS.validate_python(payload)
        out.append((message.event, payload))
    return out


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "backend-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "backend-model",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({"content": ", wörld"}),
    chunk({"content": "!"}),
    chunk({}, "stop"),
    usage_chunk(12, 4),
]


# vLLM's shape: id and name first, then argument fragments keyed by index; two parallel calls.
TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me check."}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris", "days": 2}'}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": '},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"CET"}'}}]}),
    chunk({}, "tool_calls"),
    usage_chunk(40, 25),
]


def sse_bytes(chunks: list[dict[str, Any]], done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def completion(message: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "backend-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **extra}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28},
    }


WEATHER_TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"tz": {}}}},
]


def translating_app(backend: Any, backend_model: str = "backend-model") -> web.Application:
    """What the edge does for a backend without native Messages: translate both ways.

    backend: anything with the `url` of an OpenAI-compatible server (read per request).
    """
    session_key = web.AppKey("session", ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with ClientSession() as session:
            app[session_key] = session
            yield

    async def messages(request: web.Request) -> web.StreamResponse:
        try:
            payload = validate_messages_request(await request.json())
            upstream_body = to_openai_request(payload, model=backend_model)
        except AnthropicError as error:
            return web.Response(
                status=error.status, body=error.body(), content_type="application/json"
            )
        session = request.app[session_key]
        stops = payload.get("stop_sequences") or ()
        async with session.post(f"{backend.url}/v1/chat/completions", json=upstream_body) as up:
            if not payload.get("stream"):
                message = from_openai_response(
                    await up.json(), model=payload["model"], stop_sequences=stops
                )
                return web.json_response(message)
            translator = StreamTranslator(
                model=payload["model"], stop_sequences=stops, input_tokens=count_tokens(payload)
            )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(translator.start())
            async for data in up.content.iter_any():
                if out := translator.feed_bytes(data):
                    await response.write(out)
            out = translator.feed_end()
            if not translator.done:
                out += translator.error(api_error("the backend closed the stream mid-answer"))
            await response.write(out)
            await response.write_eof()
            return response

    async def tokens(request: web.Request) -> web.Response:
        try:
            payload = validate_count_tokens_request(await request.json())
        except AnthropicError as error:
            return web.Response(
                status=error.status, body=error.body(), content_type="application/json"
            )
        return web.json_response(count_tokens_response(payload))

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", tokens)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"
