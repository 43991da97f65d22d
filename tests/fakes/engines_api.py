"""The own endpoints of the servers added later: LiteLLM proxy, LMDeploy, Docker Model Runner,
Lemonade, vLLM-MLX, Hugging Face TGI, NVIDIA NIM and Triton's OpenAI frontend.

Shapes follow each project's API documentation (and, where it is thin, its server source):
LiteLLM's docs/proxy/health and /model/info; LMDeploy's api_server (/health, /v1/encode,
/generate, lmdeploy:* metrics); Docker's "DMR REST API" (OpenAI under /engines); Lemonade's
server spec (/api/v1/health, /api/v1/models, /api/v1/system-info); vllm-mlx's server.py
(/health); TGI's router (/info, /health, /metrics, /generate); NIM's API reference
(/v1/health/ready, /v1/metadata, /v1/version); Triton's openai_frontend (/health/ready,
owned_by "Triton Inference Server").
"""

from __future__ import annotations

from aiohttp import web

from tests.fakes.models import count_tokens
from tests.fakes.native_api import _metrics, _served_name, empty_ok
from tests.fakes.openai_api import json_body
from tests.fakes.server import FAKE_KEY, FakeServer, RequestRejected

# Where each kind keeps its OpenAI API (the fake registers /v1/... below it).
OPENAI_PREFIX: dict[str, str] = {"docker-model-runner": "/engines", "lemonade": "/api"}


# ---------------------------------------------------------------------- LiteLLM


async def litellm_liveliness(request: web.Request) -> web.StreamResponse:
    return request.app[FAKE_KEY].json("I'm alive!")


async def litellm_readiness(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    return fake.json(
        {
            "status": "healthy",
            "db": "Not connected",
            "cache": None,
            "litellm_version": fake.version,
            "success_callbacks": [],
            "use_aiohttp_transport": True,
        }
    )


async def litellm_model_info(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    data = [
        {
            "model_name": m.id,
            "litellm_params": {"model": f"hosted_vllm/{m.id}"},
            "model_info": {
                "id": m.digest[:32],
                "db_model": False,
                "max_tokens": m.context_length,
                "max_input_tokens": m.context_length,
                "max_output_tokens": None,
                "mode": "embedding" if m.embedding else "chat",
                "litellm_provider": "hosted_vllm",
            },
        }
        for m in fake.models
    ]
    return fake.json({"data": data})


# --------------------------------------------------------------------- LMDeploy


def _lmdeploy_metrics(fake: FakeServer) -> web.Response:
    labels = f'engine="0",model_name="{_served_name(fake)}"'
    return _metrics(
        [
            (
                "lmdeploy:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                labels,
                fake.running_requests,
            ),
            (
                "lmdeploy:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                labels,
                fake.waiting_requests,
            ),
            (
                "lmdeploy:gpu_cache_usage_perc",
                "gauge",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                labels,
                fake.kv_cache_usage,
            ),
        ]
    )


async def lmdeploy_metrics(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    if not fake.metrics_enabled:
        return web.Response(status=404, text="Not Found")
    return _lmdeploy_metrics(fake)


async def lmdeploy_encode(request: web.Request) -> web.StreamResponse:
    """POST /v1/encode {"input": str | [str], "do_preprocess", "add_bos"}."""
    body = json_body(request)
    text = body.get("input")
    if isinstance(text, list):
        ids = [list(range(count_tokens(str(t)))) for t in text]
        return request.app[FAKE_KEY].json({"input_ids": ids, "length": [len(i) for i in ids]})
    if not isinstance(text, str):
        raise RequestRejected(400, "input must be a string or a list of strings")
    ids_one = list(range(count_tokens(text)))
    return request.app[FAKE_KEY].json({"input_ids": ids_one, "length": len(ids_one)})


async def lmdeploy_generate(request: web.Request) -> web.StreamResponse:
    """POST /generate {"prompt", "session_id"?, "stream"?}: LMDeploy's own non-OpenAI API."""
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise RequestRejected(400, "prompt must be a string")
    text = f"[{fake.name}] {prompt}"
    return fake.json(
        {
            "text": text,
            "tokens": count_tokens(text),
            "input_tokens": count_tokens(prompt),
            "history_tokens": 0,
            "finish_reason": "stop",
        }
    )


# ---------------------------------------------------------------- Docker Model Runner


async def dmr_root(request: web.Request) -> web.StreamResponse:
    return web.Response(text="Docker Model Runner\n\nThe service is running.\n")


async def dmr_models(request: web.Request) -> web.StreamResponse:
    """GET /models: the native list of pulled models (tags and config)."""
    fake = request.app[FAKE_KEY]
    return fake.json(
        [
            {
                "id": f"sha256:{m.digest}",
                "tags": [m.id],
                "created": int(fake.started_at),
                "config": {
                    "format": "gguf",
                    "quantization": m.quantization,
                    "parameters": m.parameter_size,
                    "architecture": m.family,
                    "size": f"{m.size / 2**20:.2f} MiB",
                },
            }
            for m in fake.models
        ]
    )


# --------------------------------------------------------------------- Lemonade


async def lemonade_health(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    loaded = [m for m in fake.models if m.loaded]
    return fake.json(
        {
            "status": "ok",
            "version": fake.version,
            "checkpoint_loaded": f"unsloth/{loaded[-1].id}-GGUF" if loaded else None,
            "model_loaded": loaded[-1].id if loaded else None,
            "all_models_loaded": [
                {
                    "model_name": m.id,
                    "checkpoint": f"unsloth/{m.id}-GGUF",
                    "recipe": "llamacpp",
                    "type": "embedding" if m.embedding else "llm",
                    "device": "gpu",
                }
                for m in loaded
            ],
        }
    )


async def lemonade_system_info(request: web.Request) -> web.StreamResponse:
    return request.app[FAKE_KEY].json(
        {
            "OS Version": "Linux-6.8.0-x86_64",
            "Processor": "AMD Ryzen AI 9 HX 370",
            "Physical Memory": "64.0 GB",
            "devices": {"cpu": {"available": True}, "amd_igpu": {"available": True}},
        }
    )


# ---------------------------------------------------------------------- vLLM-MLX


async def vllm_mlx_health(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    return fake.json(
        {
            "status": "healthy",
            "model_loaded": bool(fake.models),
            "model_name": _served_name(fake) or None,
            "model_type": "llm",
            "engine_type": "batched",
            "mcp": None,
        }
    )


# --------------------------------------------------------------------------- TGI


async def tgi_info(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model = fake.models[0]
    return fake.json(
        {
            "model_id": model.id,
            "model_sha": model.digest[:40],
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": model.context_length - 1,
            "max_total_tokens": model.context_length,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": fake.version,
            "sha": "4d28897b4e345f4dfdd93d3434e50ac8afcdf9e1",
            "docker_label": "sha-4d28897",
        }
    )


async def tgi_metrics(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    return _metrics(
        [
            ("tgi_queue_size", "gauge", "Current queue size", "", fake.waiting_requests),
            ("tgi_batch_current_size", "gauge", "Current batch size", "", fake.running_requests),
        ]
    )


async def tgi_generate(request: web.Request) -> web.StreamResponse:
    """POST /generate {"inputs", "parameters"}: {"generated_text": ...}."""
    fake = request.app[FAKE_KEY]
    body = json_body(request)
    inputs = body.get("inputs")
    if not isinstance(inputs, str):
        raise RequestRejected(422, "Failed to deserialize the JSON body: missing field `inputs`")
    return fake.json({"generated_text": f"[{fake.name}] {inputs}"})


# --------------------------------------------------------------------------- NIM


async def nim_metadata(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    return fake.json(
        {
            "assetInfo": [f"{m.id}:hf-1d54af3-nim1.3" for m in fake.models],
            "licenseInfo": {"name": "NVIDIA AI Foundation Models Community License"},
            "modelInfo": [
                {"modelUrl": f"ngc://nim/{m.id}:hf-1d54af3", "shortName": m.id} for m in fake.models
            ],
            "repository_override": "",
            "version": fake.version,
        }
    )


async def nim_version(request: web.Request) -> web.StreamResponse:
    return request.app[FAKE_KEY].json({"release": request.app[FAKE_KEY].version, "api": "1.0.0"})


async def nim_metrics(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    labels = f'model_name="{_served_name(fake)}"'
    return _metrics(
        [
            ("num_requests_running", "gauge", "Number of requests running.", labels,
             fake.running_requests),
            ("num_requests_waiting", "gauge", "Number of requests waiting.", labels,
             fake.waiting_requests),
            ("gpu_cache_usage_perc", "gauge", "GPU KV-cache usage.", labels,
             fake.kv_cache_usage),
        ]
    )  # fmt: skip


# ------------------------------------------------------------------------ Triton


async def triton_metrics(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    return _metrics(
        [
            (
                "nv_inference_pending_request_count",
                "gauge",
                "Instantaneous number of pending requests awaiting execution per-model.",
                f'model="{m.id}",version="1"',
                fake.waiting_requests if i == 0 else 0,
            )
            for i, m in enumerate(fake.models)
        ]
    )


# ------------------------------------------------------------------------- table


def add_routes(app: web.Application, fake: FakeServer) -> None:
    router = app.router
    kind = fake.kind
    if kind == "litellm":
        router.add_get("/health/liveliness", litellm_liveliness)
        router.add_get("/health/liveness", litellm_liveliness)
        router.add_get("/health/readiness", litellm_readiness)
        router.add_get("/model/info", litellm_model_info)
        router.add_get("/v1/model/info", litellm_model_info)
    elif kind == "lmdeploy":
        router.add_get("/health", empty_ok)
        router.add_get("/metrics", lmdeploy_metrics)
        router.add_post("/v1/encode", lmdeploy_encode)
        router.add_post("/generate", lmdeploy_generate)
    elif kind == "docker-model-runner":
        router.add_get("/", dmr_root)
        router.add_get("/models", dmr_models)
    elif kind == "lemonade":
        router.add_get("/api/v1/health", lemonade_health)
        router.add_get("/api/v1/system-info", lemonade_system_info)
    elif kind == "vllm-mlx":
        router.add_get("/health", vllm_mlx_health)
    elif kind == "tgi":
        router.add_get("/health", empty_ok)
        router.add_get("/info", tgi_info)
        router.add_get("/metrics", tgi_metrics)
        router.add_post("/generate", tgi_generate)
    elif kind == "nim":
        router.add_get("/v1/health/ready", empty_ok)
        router.add_get("/v1/health/live", empty_ok)
        router.add_get("/v1/metadata", nim_metadata)
        router.add_get("/v1/version", nim_version)
        router.add_get("/metrics", nim_metrics)
    elif kind == "triton":
        router.add_get("/health/ready", empty_ok)
        router.add_get("/metrics", triton_metrics)
