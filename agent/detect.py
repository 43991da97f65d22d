"""Telling which inference server is behind a URL, from the server's own endpoints.

All identifying requests go out at once (each bounded by the probe timeout); the answers are
then given to one detector per server type, most distinctive first; the first that recognises
its server decides. Each detector looks only for what its own server documents, so none
claims another's server (tests/agent/test_detect.py runs every detector against every fake):

- Ollama: ``GET /`` says "Ollama is running".
- llama.cpp server: ``GET /props`` has ``default_generation_settings`` / ``total_slots``;
  while loading, ``/health`` answers 503 ``{"error": {"message": "Loading model"}}``.
- LM Studio: ``GET /api/v0/models`` lists models with a ``state`` (loaded / not-loaded).
- SGLang: ``GET /get_model_info`` answers ``{"model_path": ...}``.
- LiteLLM proxy: ``GET /health/readiness`` answers a ``litellm_version``.
- Docker Model Runner: ``GET /engines/v1/models`` answers an OpenAI model list.
- Lemonade: ``GET /api/v1/health`` answers ``model_loaded`` / ``all_models_loaded``.
- Hugging Face TGI: ``GET /info`` answers ``model_id`` and ``max_total_tokens``.
- NVIDIA NIM: ``GET /v1/metadata`` answers ``modelInfo`` (NIM runs vLLM inside: before vLLM).
- vLLM-MLX: ``GET /health`` answers ``model_loaded`` and ``engine_type``.
- LMDeploy: ``GET /v1/models`` entries are ``owned_by: "lmdeploy"``.
- Triton's OpenAI frontend: ``GET /v1/models`` entries are ``owned_by: "Triton Inference Server"``.
- vLLM: ``GET /v1/models`` entries are ``owned_by: "vllm"``, or ``/version`` answers and
  ``/metrics`` has ``vllm:`` series; SGLang also by ``owned_by: "sglang"``.
- Anything else answering ``GET /v1/models`` with an OpenAI model list: generic OpenAI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.http import BackendClient, ParseError, ProbeResponse

_ANY_STATUS = range(100, 600)
_PATHS = (
    "/",
    "/api/version",
    "/props",
    "/health",
    "/api/v0/models",
    "/get_model_info",
    "/version",
    "/v1/models",
    "/metrics",
    "/health/readiness",
    "/engines/v1/models",
    "/api/v1/health",
    "/info",
    "/v1/metadata",
)

Answers = Mapping[str, ProbeResponse]
# A detector returns why it recognised its server, or None.
Detector = Callable[[Answers], str | None]


@dataclass(frozen=True)
class Detection:
    """The server type found (None when nothing matched) and why."""

    server_type: str | None
    # Why this type: the answers that told it.
    evidence: str
    # Every probe's outcome, for the log when nothing matched.
    outcomes: tuple[str, ...]

    @property
    def reachable(self) -> bool:
        return not self.evidence.startswith("no answer")


async def detect(client: BackendClient) -> Detection:
    """Ask the server's identifying endpoints at once and decide what it is."""
    answers = await ask(client)
    outcomes = tuple(r.describe() for r in answers.values())
    server_type, evidence = decide(answers)
    return Detection(server_type, evidence, outcomes)


async def ask(client: BackendClient) -> Answers:
    """Every identifying endpoint's answer, by path (asked at once)."""
    answers = await asyncio.gather(*(client.get(p, expected=_ANY_STATUS) for p in _PATHS))
    return dict(zip(_PATHS, answers, strict=True))


def _json(resp: ProbeResponse) -> Any:
    if not resp.ok:
        return None
    try:
        return resp.json()
    except ParseError:
        return None


def _models_list(resp: ProbeResponse) -> list[dict[str, Any]] | None:
    data = _json(resp)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return [m for m in data["data"] if isinstance(m, dict)]
    return None


def _owners(r: Answers) -> set[str]:
    return {str(m.get("owned_by", "")) for m in _models_list(r["/v1/models"]) or ()}


def _ollama(r: Answers) -> str | None:
    root = r["/"]
    if root.ok and "ollama is running" in root.text().lower():
        return 'GET / says "Ollama is running"'
    return None


def _llamacpp(r: Answers) -> str | None:
    props = _json(r["/props"])
    if isinstance(props, dict) and any(
        k in props for k in ("default_generation_settings", "total_slots")
    ):
        return "GET /props has default_generation_settings/total_slots (llama.cpp)"
    health = r["/health"]
    if health.status == 503 and b"loading model" in health.body.lower():
        return 'GET /health answers 503 "Loading model" (llama.cpp, loading)'
    return None


def _lmstudio(r: Answers) -> str | None:
    lms = _models_list(r["/api/v0/models"])
    if lms is not None and (not lms or any("state" in m for m in lms)):
        return "GET /api/v0/models lists models with a state (LM Studio)"
    return None


def _sglang(r: Answers) -> str | None:
    info = _json(r["/get_model_info"])
    if isinstance(info, dict) and "model_path" in info:
        return "GET /get_model_info has model_path (SGLang)"
    return None


def _litellm(r: Answers) -> str | None:
    ready = _json(r["/health/readiness"])
    if isinstance(ready, dict) and "litellm_version" in ready:
        return "GET /health/readiness has litellm_version (LiteLLM proxy)"
    return None


def _docker_model_runner(r: Answers) -> str | None:
    if _models_list(r["/engines/v1/models"]) is not None:
        return "GET /engines/v1/models answers a model list (Docker Model Runner)"
    return None


def _lemonade(r: Answers) -> str | None:
    health = _json(r["/api/v1/health"])
    if isinstance(health, dict) and ("model_loaded" in health or "all_models_loaded" in health):
        return "GET /api/v1/health has model_loaded (Lemonade)"
    return None


def _tgi(r: Answers) -> str | None:
    info = _json(r["/info"])
    if isinstance(info, dict) and "model_id" in info and "max_total_tokens" in info:
        return "GET /info has model_id and max_total_tokens (Hugging Face TGI)"
    return None


def _nim(r: Answers) -> str | None:
    metadata = _json(r["/v1/metadata"])
    if isinstance(metadata, dict) and "modelInfo" in metadata:
        return "GET /v1/metadata has modelInfo (NVIDIA NIM)"
    return None


def _vllm_mlx(r: Answers) -> str | None:
    health = _json(r["/health"])
    if isinstance(health, dict) and "model_loaded" in health and "engine_type" in health:
        return "GET /health has model_loaded and engine_type (vLLM-MLX)"
    return None


def _lmdeploy(r: Answers) -> str | None:
    if "lmdeploy" in _owners(r):
        return 'GET /v1/models entries are owned_by "lmdeploy"'
    return None


def _triton(r: Answers) -> str | None:
    if "Triton Inference Server" in _owners(r):
        return 'GET /v1/models entries are owned_by "Triton Inference Server"'
    return None


def _vllm(r: Answers) -> str | None:
    if "vllm" in _owners(r):
        return 'GET /v1/models entries are owned_by "vllm"'
    version = _json(r["/version"])
    metrics = r["/metrics"]
    vllm_series = metrics.ok and b"vllm:" in metrics.body
    if isinstance(version, dict) and "version" in version and vllm_series:
        return "GET /version answers and /metrics has vllm: series"
    return None


def _sglang_owned(r: Answers) -> str | None:
    return 'GET /v1/models entries are owned_by "sglang"' if "sglang" in _owners(r) else None


def _openai(r: Answers) -> str | None:
    if _models_list(r["/v1/models"]) is not None:
        return "GET /v1/models answers an OpenAI model list (generic OpenAI-compatible)"
    return None


# In order: the first that recognises its server decides.
DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("ollama", _ollama),
    ("llamacpp", _llamacpp),
    ("lmstudio", _lmstudio),
    ("sglang", _sglang),
    ("litellm", _litellm),
    ("docker-model-runner", _docker_model_runner),
    ("lemonade", _lemonade),
    ("tgi", _tgi),
    ("nim", _nim),
    ("vllm-mlx", _vllm_mlx),
    ("lmdeploy", _lmdeploy),
    ("triton", _triton),
    ("vllm", _vllm),
    ("sglang", _sglang_owned),
    ("openai", _openai),
)


def decide(r: Answers) -> tuple[str | None, str]:
    """The server type these answers tell, and why (None and why not, when none does)."""
    for server_type, detector in DETECTORS:
        evidence = detector(r)
        if evidence is not None:
            return server_type, evidence
    if not any(resp.answered for resp in r.values()):
        first = r["/"]
        return None, f"no answer from the server ({first.detail})"
    return None, "the server answers, but none of its answers matches a known server type"
