"""Anthropic's Messages API (`/v1/messages`), served when `fake.anthropic_native` is set."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.models import count_tokens, messages_tokens, plan_reply, split_pieces
from tests.fakes.openai_api import json_body, require_model
from tests.fakes.server import FAKE_KEY, FakeServer, RequestRejected


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def messages(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    if not fake.anthropic_native:
        raise web.HTTPNotFound()
    body = json_body(request)
    model = require_model(fake, body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        if fake.kind == "llamacpp":  # what llama-server answers (checked against the real one)
            raise RequestRejected(500, "'messages' is required")
        raise RequestRejected(400, "messages: field required")
    if not isinstance(body.get("max_tokens"), int):
        raise RequestRejected(400, "max_tokens: field required")
    tools = [t["name"] for t in body.get("tools") or [] if isinstance(t, dict) and "name" in t]
    choice = body.get("tool_choice") or {"type": "auto"}
    forced = choice.get("name") if choice.get("type") == "tool" else None
    reply = plan_reply(fake.name, msgs, tools, forced, choice.get("type") != "none")
    input_tokens = messages_tokens(msgs)
    message_id = f"msg_{secrets.token_hex(12)}"
    model_name = body.get("model") or model.id
    if reply.tool_name:
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": f"toolu_{reply.tool_call_id}",
            "name": reply.tool_name,
            "input": reply.tool_arguments,
        }
        stop_reason = "tool_use"
        output_tokens = 1
    else:
        block = {"type": "text", "text": reply.text}
        stop_reason = "end_turn"
        output_tokens = count_tokens(reply.text)

    def envelope(content: list[dict[str, Any]], stop: str | None, out: int) -> dict[str, Any]:
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": model_name,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": out},
        }

    if not body.get("stream"):
        return fake.json(envelope([block], stop_reason, output_tokens))

    def chunks() -> Iterator[bytes]:
        yield event("message_start", {"type": "message_start", "message": envelope([], None, 1)})
        if reply.tool_name:
            start = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in split_pieces(
                    orjson.dumps(reply.tool_arguments).decode(), fake.stream_chunks
                )
            ]
        else:
            start = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": piece}
                for piece in split_pieces(reply.text, fake.stream_chunks)
            ]
        yield event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": start},
        )
        for delta in deltas:
            yield event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        yield event("message_stop", {"type": "message_stop"})

    return await fake.stream(request, chunks())


def add_routes(app: web.Application, fake: FakeServer) -> None:
    # Always routed, so turning anthropic_native on or off works while running.
    app.router.add_post("/v1/messages", messages)
