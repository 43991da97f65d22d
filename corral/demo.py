"""Demo backends for `corral up --demo`: an honest echo model behind the OpenAI HTTP API.

It is not a language model and says so: the answer repeats the last user message. It streams
word by word (SSE, as OpenAI does) so a newcomer can watch streaming work end to end on a
machine with no inference server at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

DEMO_MODEL = "corral-demo-echo"
# Pause between streamed words, so streaming is visible to a person.
WORD_DELAY_SECONDS = 0.03


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
    return ""


class DemoBackend:
    """One demo inference server on a loopback port."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": DEMO_MODEL, "object": "model", "created": 0, "owned_by": "corral-demo"}
        return web.json_response({"object": "list", "data": [model]})

    async def _read(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "invalid_body")
        if body.get("model") != DEMO_MODEL:
            return _error(404, f"model {body.get('model')!r} not found", "model_not_found", "model")
        return body

    def _answer(self, text: str) -> str:
        return f"[{self.name}] you said: {text}" if text else f"[{self.name}] (nothing to echo)"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        answer = self._answer(_last_user_text(body.get("messages")))
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        usage = {
            "prompt_tokens": 1,
            "completion_tokens": len(answer.split()),
            "total_tokens": 1 + len(answer.split()),
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": DEMO_MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": DEMO_MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        await response.write(chunk({"role": "assistant", "content": ""}))
        words = answer.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(WORD_DELAY_SECONDS)
            await response.write(chunk({"content": word if i == 0 else " " + word}))
        await response.write(chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _completions(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt")
        text = self._answer(prompt if isinstance(prompt, str) else "")
        return web.json_response(
            {
                "id": f"cmpl-{uuid.uuid4().hex[:24]}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": DEMO_MODEL,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for index, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            vector = [v / 2**31 for v in struct.unpack(">8i", digest)]
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": DEMO_MODEL,
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
            }
        )
