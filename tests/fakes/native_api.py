"""Each kind's own endpoints: health, model lists, loaded models, metrics (vLLM, SGLang,
llama.cpp, LM Studio; Ollama's native API is in ollama_api)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.models import (
    FakeModel,
)
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


# ------------------------------------------------------------------------ table


def add_routes(app: web.Application, fake: FakeServer) -> None:
    router = app.router
    if fake.kind == "vllm":
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
