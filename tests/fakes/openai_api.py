"""OpenAI-compatible endpoints (chat, completions, embeddings; models in openai_models) per kind."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import llamacpp_api
from tests.fakes.models import (
    EMBEDDING_DIM,
    FakeModel,
    Reply,
    count_tokens,
    embedding_base64,
    embedding_vector,
    messages_tokens,
    plan_reply,
    split_pieces,
    truncate_words,
)
from tests.fakes.openai_models import list_models, retrieve_model
from tests.fakes.server import BODY_KEY, FAKE_KEY, FakeServer, RequestRejected

DONE = b"data: [DONE]\n\n"


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def json_body(request: web.Request) -> dict[str, Any]:
    body = request[BODY_KEY]
    if not isinstance(body, dict):
        raise RequestRejected(400, "request body must be a JSON object")
    return body


def require_model(fake: FakeServer, body: dict[str, Any]) -> FakeModel:
    """The served model named in the body; a missing or unknown model is refused."""
    name = body.get("model")
    if name is None and fake.kind == "llamacpp" and fake.models:
        return fake.models[0]  # llama.cpp serves its one model whatever the name
    if fake.kind == "tgi" and fake.models:
        return fake.models[0]  # TGI ignores the model field ("tgi" in its own examples)
    if not isinstance(name, str) or not name:
        raise RequestRejected(400, "you must provide a model parameter")
    model = fake.model(name)
    if model is None:
        if fake.kind == "ollama":
            message = f'model "{name}" not found, try pulling it first'
        else:
            message = f"The model `{name}` does not exist."
        raise RequestRejected(404, message, code="model_not_found")
    if fake.kind in ("ollama", "lmstudio", "lemonade", "docker-model-runner"):
        model.loaded = True  # these load a model on demand
    return model


def check_context(fake: FakeServer, model: FakeModel, prompt_tokens: int, max_tokens: Any) -> None:
    """vLLM-style refusal when prompt plus completion exceed the model's context."""
    if fake.kind == "ollama":
        return  # Ollama truncates the prompt instead
    wanted = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else 0
    if prompt_tokens + wanted > model.context_length:
        raise RequestRejected(
            400,
            f"This model's maximum context length is {model.context_length} tokens. However, "
            f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, "
            f"{wanted} in the completion). Please reduce the length of the messages or "
            "completion.",
            code="context_length_exceeded",
        )


def _max_tokens(body: dict[str, Any]) -> Any:
    return body.get("max_completion_tokens", body.get("max_tokens"))


def chat_reply(fake: FakeServer, body: dict[str, Any]) -> Reply:
    tools = body.get("tools")
    names = [
        t["function"]["name"]
        for t in tools or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]
    ]
    choice = body.get("tool_choice", "auto")
    forced = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        forced = choice["function"].get("name")
    return plan_reply(fake.name, body["messages"], names, forced, choice != "none")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    model = require_model(fake, body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestRejected(400, "messages must be a non-empty list")
    prompt_tokens = messages_tokens(messages)
    check_context(fake, model, prompt_tokens, _max_tokens(body))
    reply = chat_reply(fake, body)
    text, cut = truncate_words(reply.text, _max_tokens(body))
    finish = "tool_calls" if reply.tool_name else ("length" if cut else "stop")
    arguments = orjson.dumps(reply.tool_arguments).decode() if reply.tool_name else ""
    completion_tokens = count_tokens(text or arguments)
    usage = _usage(prompt_tokens, completion_tokens)
    llamacpp = fake.kind == "llamacpp"
    cached = llamacpp_api.cached_tokens(fake, messages) if llamacpp else 0
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    model_name = body.get("model") or model.id

    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if reply.tool_name:
            message["tool_calls"] = [
                {
                    "id": f"call_{reply.tool_call_id}",
                    "type": "function",
                    "function": {"name": reply.tool_name, "arguments": arguments},
                }
            ]
        else:
            message["content"] = text
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage,
            "system_fingerprint": None,
        }
        if request.path.startswith("/api/v0/"):
            payload.update(_lmstudio_extras(fake, model, completion_tokens))
        if llamacpp:
            llamacpp_api.shape_completion(fake, payload, cached)
        return fake.json(payload)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            payload["usage"] = None
        if llamacpp:
            llamacpp_api.shape_chunk(fake, payload, usage, cached)
        return sse(payload)

    def chunks() -> Iterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        if reply.tool_name:
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": f"call_{reply.tool_call_id}",
                            "type": "function",
                            "function": {"name": reply.tool_name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in split_pieces(arguments, fake.stream_chunks):
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        else:
            for piece in split_pieces(text, fake.stream_chunks):
                yield chunk({"content": piece})
        yield chunk({}, finish)
        if include_usage:
            last: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "choices": [],
                "usage": usage,
            }
            if llamacpp:
                llamacpp_api.shape_chunk(fake, last, usage, cached)
            yield sse(last)
        yield DONE

    return await fake.stream(request, chunks())


def _lmstudio_extras(fake: FakeServer, model: FakeModel, tokens: int) -> dict[str, Any]:
    return {
        "stats": {
            "tokens_per_second": 100.0,
            "time_to_first_token": 0.01,
            "generation_time": tokens / 100.0,
            "stop_reason": "eosFound",
        },
        "model_info": {
            "arch": model.family,
            "quant": model.quantization,
            "format": "gguf",
            "context_length": model.context_length,
        },
        "runtime": {
            "name": "llama.cpp-linux-x86_64-avx2",
            "version": fake.version,
            "supported_formats": ["gguf"],
        },
    }


def _prompts(prompt: Any) -> list[str]:
    """OpenAI's prompt forms: a string, strings, a token list, or token lists."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, int) for p in prompt):
            return [" ".join(str(p) for p in prompt)]
        if all(isinstance(p, list) for p in prompt):
            return [" ".join(str(t) for t in p) for p in prompt]
    raise RequestRejected(400, "prompt must be a string, a list of strings or token ids")


async def completions(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    model = require_model(fake, body)
    prompts = _prompts(body.get("prompt"))
    prompt_tokens = sum(count_tokens(p) for p in prompts)
    check_context(fake, model, max(count_tokens(p) for p in prompts), _max_tokens(body))
    texts: list[tuple[str, str]] = []
    for prompt in prompts:
        text, cut = truncate_words(f"[{fake.name}] {prompt}", _max_tokens(body))
        texts.append((text, "length" if cut else "stop"))
    usage = _usage(prompt_tokens, sum(count_tokens(t) for t, _ in texts))
    completion_id = f"cmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    model_name = body.get("model") or model.id

    def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": choices,
        }

    if not body.get("stream"):
        payload = envelope(
            [
                {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                for i, (text, finish) in enumerate(texts)
            ]
        )
        payload["usage"] = usage
        return fake.json(payload)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(index: int, text: str, finish: str | None) -> bytes:
        payload = envelope(
            [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]
        )
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    def chunks() -> Iterator[bytes]:
        for index, (text, finish) in enumerate(texts):
            for piece in split_pieces(text, fake.stream_chunks):
                yield chunk(index, piece, None)
            yield chunk(index, "", finish)
        if include_usage:
            payload = envelope([])
            payload["usage"] = usage
            yield sse(payload)
        yield DONE

    return await fake.stream(request, chunks())


def embedding_inputs(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]
        if all(isinstance(v, str | list) for v in value):
            return list(value)
    raise RequestRejected(400, "input must be a string, a list of strings or token ids")


async def embeddings(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    model = require_model(fake, body)
    inputs = embedding_inputs(body.get("input"))
    dim = body.get("dimensions") or EMBEDDING_DIM
    if not isinstance(dim, int) or dim <= 0:
        raise RequestRejected(400, "dimensions must be a positive integer")
    base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dim)
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": embedding_base64(vector) if base64 else vector,
            }
        )
    tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in inputs)
    return fake.json(
        {
            "object": "list",
            "data": data,
            "model": body.get("model") or model.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def add_routes(app: web.Application, fake: FakeServer) -> None:
    from tests.fakes.engines_api import OPENAI_PREFIX

    prefixes = [OPENAI_PREFIX.get(fake.kind, "")]
    if fake.kind == "docker-model-runner":
        prefixes.append("/engines/llama.cpp")  # the engine named explicitly
    for prefix in prefixes:
        app.router.add_post(f"{prefix}/v1/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/v1/completions", completions)
        app.router.add_post(f"{prefix}/v1/embeddings", embeddings)
        app.router.add_get(f"{prefix}/v1/models", list_models)
        app.router.add_get(f"{prefix}/v1/models/{{model:.+}}", retrieve_model)
    if fake.kind == "llamacpp":
        # llama.cpp also serves these two without /v1 (its /completions and /embeddings
        # without /v1 are its own non-OpenAI formats, which the fake does not serve).
        app.router.add_post("/chat/completions", chat_completions)
        app.router.add_get("/models", list_models)
    if fake.kind == "lmstudio":
        app.router.add_post("/api/v0/chat/completions", chat_completions)
        app.router.add_post("/api/v0/completions", completions)
        app.router.add_post("/api/v0/embeddings", embeddings)
