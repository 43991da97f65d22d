"""OpenAI-compatible model listing (/v1/models and /v1/models/{model}) in each kind's own
shape: owner, root and context length, permissions, llama.cpp's extra `models` list.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.models import FakeModel
from tests.fakes.server import FAKE_KEY, FakeServer, RequestRejected

_OWNED_BY = {
    "vllm": "vllm",
    "sglang": "sglang",
    "llamacpp": "llamacpp",
    "ollama": "library",
    "lmstudio": "organization_owner",
    "openai": "openai",
    "litellm": "openai",
    "lmdeploy": "lmdeploy",
    "docker-model-runner": "docker",
    "lemonade": "lemonade",
    "vllm-mlx": "vllm-mlx",
    "tgi": "tgi",
    "nim": "system",
    "triton": "Triton Inference Server",
}


def model_entry(fake: FakeServer, model: FakeModel) -> dict[str, Any]:
    """One `/v1/models` entry in the kind's own shape."""
    entry: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": int(fake.started_at),
        "owned_by": _OWNED_BY[fake.kind],
    }
    if fake.kind in ("vllm", "sglang", "nim"):
        entry.update({"root": model.id, "parent": None, "max_model_len": model.context_length})
    if fake.kind == "lmdeploy":
        entry.update({"root": model.id, "parent": None, "permission": []})
    if fake.kind == "lemonade":
        entry.update(
            {
                "checkpoint": f"unsloth/{model.id}-GGUF",
                "recipe": "llamacpp",
                "downloaded": True,
                "suggested": True,
                "labels": ["embeddings"] if model.embedding else ["reasoning"],
            }
        )
    if fake.kind == "vllm":
        entry["permission"] = [
            {
                "id": f"modelperm-{model.digest[:16]}",
                "object": "model_permission",
                "created": int(fake.started_at),
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ]
    if fake.kind == "llamacpp":
        entry["aliases"] = [model.id]
        entry["tags"] = []
        entry["meta"] = {
            "vocab_type": 2,
            "n_vocab": 128256,
            "n_ctx": model.context_length,
            "n_ctx_train": model.context_length,
            "n_embd": 4096,
            "n_params": 8030261248,
            "size": model.size,
            "ftype": "Q4_K - Medium",
        }
    return entry


async def list_models(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    payload: dict[str, Any] = {
        "object": "list",
        "data": [model_entry(fake, m) for m in fake.models],
    }
    if fake.kind == "llamacpp":
        payload["models"] = [
            {
                "name": m.id,
                "model": m.id,
                "modified_at": "",
                "size": "",
                "digest": "",
                "type": "model",
                "description": "",
                "tags": [""],
                "capabilities": ["completion"],
                "parameters": "",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "",
                    "families": [""],
                    "parameter_size": "",
                    "quantization_level": "",
                },
            }
            for m in fake.models
        ]
    return fake.json(payload)


async def retrieve_model(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    name = request.match_info["model"]
    model = fake.model(name)
    if model is None:
        raise RequestRejected(404, f"The model `{name}` does not exist.", code="model_not_found")
    return fake.json(model_entry(fake, model))
