"""Telling which inference server is behind a URL, from the server's own endpoints.

All identifying requests go out at once (each bounded by the probe timeout); the answers are
then read in an order that tells the servers apart, most distinctive first:

1. Ollama: ``GET /`` says "Ollama is running" (``/api/version`` answers ``{"version": ...}``).
2. llama.cpp server: ``GET /props`` has ``default_generation_settings`` / ``total_slots``;
   while loading, ``/health`` answers 503 ``{"error": {"message": "Loading model"}}``.
3. LM Studio: ``GET /api/v0/models`` lists models with a ``state`` (loaded / not-loaded).
4. SGLang: ``GET /get_model_info`` answers ``{"model_path": ...}``.
5. vLLM: ``GET /v1/models`` entries are ``owned_by: "vllm"``, or ``/version`` answers and
   ``/metrics`` has ``vllm:`` series.
6. Anything else answering ``GET /v1/models`` with an OpenAI model list: generic OpenAI.
"""

from __future__ import annotations

import asyncio
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
)


@dataclass(frozen=True)
class Detection:
    """The server kind found (None when nothing matched) and why."""

    kind: str | None
    # Why this kind: the answers that told it.
    evidence: str
    # Every probe's outcome, for the log when nothing matched.
    outcomes: tuple[str, ...]

    @property
    def reachable(self) -> bool:
        return not self.evidence.startswith("no answer")


async def detect(client: BackendClient) -> Detection:
    """Ask the server's identifying endpoints at once and decide what it is."""
    answers = await asyncio.gather(*(client.get(p, expected=_ANY_STATUS) for p in _PATHS))
    by_path = dict(zip(_PATHS, answers, strict=True))
    outcomes = tuple(r.describe() for r in answers)
    kind, evidence = _decide(by_path)
    return Detection(kind, evidence, outcomes)


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


def _decide(r: dict[str, ProbeResponse]) -> tuple[str | None, str]:
    root = r["/"]
    if root.ok and "ollama is running" in root.text().lower():
        return "ollama", 'GET / says "Ollama is running"'

    props = _json(r["/props"])
    llama_keys = ("default_generation_settings", "total_slots")
    if isinstance(props, dict) and any(k in props for k in llama_keys):
        return "llamacpp", "GET /props has default_generation_settings/total_slots (llama.cpp)"
    health = r["/health"]
    if health.status == 503 and b"loading model" in health.body.lower():
        return "llamacpp", 'GET /health answers 503 "Loading model" (llama.cpp, loading)'

    lms = _models_list(r["/api/v0/models"])
    if lms is not None and (not lms or any("state" in m for m in lms)):
        return "lmstudio", "GET /api/v0/models lists models with a state (LM Studio)"

    info = _json(r["/get_model_info"])
    if isinstance(info, dict) and "model_path" in info:
        return "sglang", "GET /get_model_info has model_path (SGLang)"

    models = _models_list(r["/v1/models"])
    owners = {str(m.get("owned_by", "")) for m in models or ()}
    if "vllm" in owners:
        return "vllm", 'GET /v1/models entries are owned_by "vllm"'
    vllm_version = _json(r["/version"])
    if (
        isinstance(vllm_version, dict)
        and "version" in vllm_version
        and r["/metrics"].ok
        and b"vllm:" in r["/metrics"].body
    ):
        return "vllm", "GET /version answers and /metrics has vllm: series"
    if "sglang" in owners:
        return "sglang", 'GET /v1/models entries are owned_by "sglang"'

    if models is not None:
        return "openai", "GET /v1/models answers an OpenAI model list (generic OpenAI-compatible)"
    if not any(resp.answered for resp in r.values()):
        first = r["/"]
        return None, f"no answer from the server ({first.detail})"
    return None, "the server answers, but none of its answers matches a known server type"
