"""The Ollama fake's native API: /, /api/version, /api/tags, /api/ps, /api/show, /api/chat,
/api/generate, /api/embed and /api/embeddings (NDJSON streams, final stats, keep_alive 0).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.models import (
    EMBEDDING_DIM,
    FakeModel,
    count_tokens,
    embedding_vector,
    messages_tokens,
    plan_reply,
    split_pieces,
)
from tests.fakes.openai_api import embedding_inputs, json_body
from tests.fakes.server import FAKE_KEY, FakeServer, RequestRejected


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _details(model: FakeModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization,
    }


async def ollama_root(request: web.Request) -> web.StreamResponse:
    return web.Response(text="Ollama is running")


async def ollama_version(request: web.Request) -> web.StreamResponse:
    return request.app[FAKE_KEY].json({"version": request.app[FAKE_KEY].version})


async def ollama_tags(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    modified = dt.datetime.fromtimestamp(fake.started_at, dt.UTC).isoformat()
    return fake.json(
        {
            "models": [
                {
                    "name": m.id,
                    "model": m.id,
                    "modified_at": modified,
                    "size": m.size,
                    "digest": m.digest,
                    "details": _details(m),
                }
                for m in fake.models
            ]
        }
    )


async def ollama_ps(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    return fake.json(
        {
            "models": [
                {
                    "name": m.id,
                    "model": m.id,
                    "size": m.size,
                    "digest": m.digest,
                    "details": _details(m),
                    "expires_at": expires,
                    "size_vram": m.size,
                    "context_length": m.context_length,
                }
                for m in fake.models
                if m.loaded
            ]
        }
    )


def _ollama_model(fake: FakeServer, body: dict[str, Any]) -> FakeModel:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise RequestRejected(400, "model is required")
    model = fake.model(name)
    if model is None:
        raise RequestRejected(404, f'model "{name}" not found, try pulling it first')
    return model


async def ollama_show(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model = _ollama_model(fake, json_body(request))
    return fake.json(
        {
            "modelfile": f"FROM {model.id}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": _details(model),
            "model_info": {
                "general.architecture": model.family,
                "general.parameter_count": 8030261248,
                f"{model.family}.context_length": model.context_length,
            },
            "capabilities": ["embedding"] if model.embedding else ["completion", "tools"],
            "modified_at": dt.datetime.fromtimestamp(fake.started_at, dt.UTC).isoformat(),
        }
    )


def _final_stats(prompt_tokens: int, eval_tokens: int) -> dict[str, Any]:
    return {
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "load_duration": 100_000,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": 200_000,
        "eval_count": eval_tokens,
        "eval_duration": 700_000,
    }


def _ndjson(payload: Any) -> bytes:
    return orjson.dumps(payload) + b"\n"


async def _ollama_answer(
    request: web.Request,
    fake: FakeServer,
    lines: list[dict[str, Any]],
    final: dict[str, Any],
    stream: bool,
) -> web.StreamResponse:
    """Ollama streams NDJSON by default; `stream: false` folds everything into one object."""
    if not stream:
        return fake.json(final)

    def chunks() -> Iterator[bytes]:
        for line in lines:
            yield _ndjson(line)

    return await fake.stream(request, chunks(), content_type="application/x-ndjson")


def _keep_alive_zero(body: dict[str, Any]) -> bool:
    return body.get("keep_alive") in (0, "0", "0s", "0m")


async def ollama_chat(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    model = _ollama_model(fake, body)
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise RequestRejected(400, "messages must be a list")
    name = body["model"]
    if not messages:  # Ollama loads (or with keep_alive 0 unloads) the model
        model.loaded = not _keep_alive_zero(body)
        reason = "load" if model.loaded else "unload"
        return fake.json(
            {
                "model": name,
                "created_at": _now(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": reason,
                "done": True,
            }
        )
    model.loaded = True
    tools = [
        t["function"]["name"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]
    ]
    reply = plan_reply(fake.name, messages, tools, None, True)
    prompt_tokens = messages_tokens(messages)
    stream = body.get("stream", True) is not False
    if reply.tool_name:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": reply.tool_name, "arguments": reply.tool_arguments}}
            ],
        }
        final = {
            "model": name,
            "created_at": _now(),
            "message": message,
            "done": True,
            **_final_stats(prompt_tokens, 1),
        }
        lines = [
            {"model": name, "created_at": _now(), "message": message, "done": False},
            {**final, "message": {"role": "assistant", "content": ""}},
        ]
        return await _ollama_answer(request, fake, lines, final, stream)
    stats = _final_stats(prompt_tokens, count_tokens(reply.text))
    final = {
        "model": name,
        "created_at": _now(),
        "message": {"role": "assistant", "content": reply.text},
        "done": True,
        **stats,
    }
    lines = [
        {
            "model": name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        for piece in split_pieces(reply.text, fake.stream_chunks)
    ]
    lines.append({**final, "message": {"role": "assistant", "content": ""}})
    return await _ollama_answer(request, fake, lines, final, stream)


async def ollama_generate(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    model = _ollama_model(fake, body)
    name = body["model"]
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise RequestRejected(400, "prompt must be a string")
    if not prompt:
        model.loaded = not _keep_alive_zero(body)
        reason = "load" if model.loaded else "unload"
        return fake.json(
            {
                "model": name,
                "created_at": _now(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        )
    model.loaded = True
    text = f"[{fake.name}] {prompt}"
    stats = _final_stats(count_tokens(prompt), count_tokens(text))
    final = {"model": name, "created_at": _now(), "response": text, "done": True, **stats}
    lines = [
        {"model": name, "created_at": _now(), "response": piece, "done": False}
        for piece in split_pieces(text, fake.stream_chunks)
    ]
    lines.append({**final, "response": ""})
    return await _ollama_answer(request, fake, lines, final, body.get("stream", True) is not False)


async def ollama_embed(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    model = _ollama_model(fake, body)
    model.loaded = True
    inputs = embedding_inputs(body.get("input"))
    dim = body.get("dimensions") or EMBEDDING_DIM
    return fake.json(
        {
            "model": body["model"],
            "embeddings": [embedding_vector(i, dim) for i in inputs],
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": sum(count_tokens(str(i)) for i in inputs),
        }
    )


async def ollama_embeddings_legacy(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    model = _ollama_model(fake, body)
    model.loaded = True
    return fake.json({"embedding": embedding_vector(str(body.get("prompt", "")))})


def add_routes(app: web.Application, fake: FakeServer) -> None:
    router = app.router
    if fake.kind == "ollama":
        router.add_get("/", ollama_root)  # aiohttp serves HEAD for GET routes too
        router.add_get("/api/version", ollama_version)
        router.add_get("/api/tags", ollama_tags)
        router.add_get("/api/ps", ollama_ps)
        router.add_post("/api/show", ollama_show)
        router.add_post("/api/chat", ollama_chat)
        router.add_post("/api/generate", ollama_generate)
        router.add_post("/api/embed", ollama_embed)
        router.add_post("/api/embeddings", ollama_embeddings_legacy)
