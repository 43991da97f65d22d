"""Each kind's own endpoints: health, model lists, loaded models, metrics, Ollama's native API."""

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

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def _metrics(lines: list[tuple[str, str, str, str, float]]) -> web.Response:
    """Prometheus text: (name, type, help, labels, value) per series."""
    out: list[str] = []
    for name, kind, help_text, labels, value in lines:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name}{{{labels}}} {float(value)}" if labels else f"{name} {value}")
    return web.Response(body=("\n".join(out) + "\n").encode(), headers={"Content-Type": PROMETHEUS})


def _served_name(fake: FakeServer) -> str:
    return fake.models[0].id if fake.models else ""


# ------------------------------------------------------------------------- vLLM


async def empty_ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def vllm_version(request: web.Request) -> web.StreamResponse:
    return request.app[FAKE_KEY].json({"version": request.app[FAKE_KEY].version})


async def vllm_metrics(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    labels = f'engine="0",model_name="{_served_name(fake)}"'
    return _metrics(
        [
            (
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                labels,
                fake.running_requests,
            ),
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                labels,
                fake.waiting_requests,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                labels,
                fake.kv_cache_usage,
            ),
            (
                "vllm:request_success_total",
                "counter",
                "Count of successfully processed requests.",
                labels + ',finished_reason="stop"',
                fake.completed,
            ),
        ]
    )


# ----------------------------------------------------------------------- SGLang


async def sglang_model_info(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model = fake.models[0] if fake.models else FakeModel(id="")
    return fake.json(
        {
            "model_path": model.id,
            "tokenizer_path": model.id,
            "is_generation": not model.embedding,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": model.family,
            "architectures": ["LlamaForCausalLM"],
        }
    )


async def sglang_server_info(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model = fake.models[0] if fake.models else FakeModel(id="")
    return fake.json(
        {
            "model_path": model.id,
            "served_model_name": model.id,
            "context_length": model.context_length,
            "max_total_num_tokens": model.context_length * fake.total_slots,
            "max_running_requests": fake.total_slots,
            "version": fake.version,
            "internal_states": [{"last_gen_throughput": 0.0}],
        }
    )


async def sglang_metrics(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    labels = f'engine_type="unified",model_name="{_served_name(fake)}",pp_rank="0",tp_rank="0"'
    return _metrics(
        [
            (
                "sglang:num_running_reqs",
                "gauge",
                "The number of running requests.",
                labels,
                fake.running_requests,
            ),
            (
                "sglang:num_queue_reqs",
                "gauge",
                "The number of requests in the waiting queue.",
                labels,
                fake.waiting_requests,
            ),
            ("sglang:token_usage", "gauge", "The token usage.", labels, fake.kv_cache_usage),
            ("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", labels, 0.0),
            ("sglang:gen_throughput", "gauge", "The generation throughput (token/s).", labels, 0.0),
        ]
    )


# -------------------------------------------------------------------- llama.cpp


async def llamacpp_health(request: web.Request) -> web.StreamResponse:
    return request.app[FAKE_KEY].json({"status": "ok"})


def _generation_settings(model: FakeModel) -> dict[str, Any]:
    return {
        "n_ctx": model.context_length,
        "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": -1},
    }


async def llamacpp_props(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model = fake.models[0] if fake.models else FakeModel(id="")
    return fake.json(
        {
            "default_generation_settings": _generation_settings(model),
            "total_slots": fake.total_slots,
            "model_path": model.id,
            "model_alias": model.id,
            "chat_template": "{{ messages }}",
            "modalities": {"vision": False, "audio": False},
            "build_info": f"{fake.version}-fake",
            "is_sleeping": False,
        }
    )


async def llamacpp_slots(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model = fake.models[0] if fake.models else FakeModel(id="")
    busy = min(fake.running_requests, fake.total_slots)
    if request.query.get("fail_on_no_slot") in ("1", "true") and busy >= fake.total_slots:
        raise RequestRejected(503, "no slot available")
    # The fields a current llama-server gives per slot (checked against the real one).
    slots = [
        {
            "id": slot_id,
            "n_ctx": model.context_length,
            "speculative": False,
            "is_processing": slot_id < busy,
        }
        for slot_id in range(fake.total_slots)
    ]
    return fake.json(slots)


async def llamacpp_metrics(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    if not fake.metrics_enabled:
        raise RequestRejected(501, "This server does not support metrics endpoint.")
    return _metrics(
        [
            (
                "llamacpp:prompt_tokens_total",
                "counter",
                "Number of prompt tokens processed.",
                "",
                fake.completed,
            ),
            (
                "llamacpp:tokens_predicted_total",
                "counter",
                "Number of generation tokens processed.",
                "",
                fake.completed,
            ),
            (
                "llamacpp:requests_processing",
                "gauge",
                "Number of requests processing.",
                "",
                min(fake.running_requests, fake.total_slots),
            ),
            (
                "llamacpp:requests_deferred",
                "gauge",
                "Number of requests deferred.",
                "",
                fake.waiting_requests + max(0, fake.running_requests - fake.total_slots),
            ),
        ]
    )


# -------------------------------------------------------------------- LM Studio


def _lmstudio_entry(model: FakeModel) -> dict[str, Any]:
    publisher, _, _ = model.id.rpartition("/")
    entry: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "type": "embeddings" if model.embedding else "llm",
        "publisher": publisher or "lmstudio-community",
        "arch": model.family,
        "compatibility_type": "gguf",
        "quantization": model.quantization,
        "state": "loaded" if model.loaded else "not-loaded",
        "max_context_length": model.context_length,
    }
    if model.loaded:
        entry["loaded_context_length"] = model.context_length
    return entry


async def lmstudio_models(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    return fake.json({"object": "list", "data": [_lmstudio_entry(m) for m in fake.models]})


async def lmstudio_model(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model = fake.model(request.match_info["model"])
    if model is None:
        raise RequestRejected(404, f"Model {request.match_info['model']} not found")
    return fake.json(_lmstudio_entry(model))


# ----------------------------------------------------------------------- Ollama


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


# ------------------------------------------------------------------------ table


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
    elif fake.kind == "vllm":
        router.add_get("/health", empty_ok)
        router.add_get("/ping", empty_ok)
        router.add_get("/version", vllm_version)
        router.add_get("/metrics", vllm_metrics)
    elif fake.kind == "sglang":
        router.add_get("/health", empty_ok)
        router.add_get("/health_generate", empty_ok)
        router.add_get("/get_model_info", sglang_model_info)
        router.add_get("/model_info", sglang_model_info)
        router.add_get("/get_server_info", sglang_server_info)
        router.add_get("/server_info", sglang_server_info)
        router.add_get("/metrics", sglang_metrics)
    elif fake.kind == "llamacpp":
        router.add_get("/health", llamacpp_health)
        router.add_get("/v1/health", llamacpp_health)
        router.add_get("/props", llamacpp_props)
        router.add_get("/slots", llamacpp_slots)
        router.add_get("/metrics", llamacpp_metrics)
    elif fake.kind == "lmstudio":
        router.add_get("/api/v0/models", lmstudio_models)
        router.add_get("/api/v0/models/{model:.+}", lmstudio_model)
