"""LiteLLM's proxy as an upstream (port 4000): GET /health/liveliness ("I'm alive!", no auth),
/health/readiness (litellm_version), /v1/models, and /model/info (per model: model_info with
max_input_tokens). /health itself is not asked: it calls every configured provider."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.http import ParseError
from agent.servers.base import Judge, ServerProbe, data_list, parse_openai_models, uint
from corral.v1 import types_pb2


def context_lengths(data: Any) -> dict[str, int]:
    """/model/info: {"data": [{"model_name", "model_info": {"max_input_tokens"...}}]}."""
    out: dict[str, int] = {}
    for item in data_list(data):
        name = item.get("model_name")
        info = item.get("model_info")
        if isinstance(name, str) and isinstance(info, dict):
            tokens = uint(info.get("max_input_tokens") or info.get("max_tokens"))
            if tokens:
                out[name] = max(out.get(name, 0), tokens)
    return out


class LiteLLMProbe(ServerProbe):
    server_type = "litellm"
    backend_type = types_pb2.BACKEND_TYPE_LITELLM
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS)

    async def info(self) -> None:
        resp = await self.client.get("/health/readiness", expected=(404, 503))
        if resp.ok:
            try:
                version = resp.json().get("litellm_version")
            except (ParseError, AttributeError):
                self.client.parse_failed(resp.path)
                return
            if isinstance(version, str) and version:
                self.server_version = version

    async def cycle(self, judge: Judge) -> None:
        alive, models, info = await asyncio.gather(
            self.client.get("/health/liveliness"),
            self.client.get("/v1/models"),
            self.optional_get("/model/info"),
        )
        if not self.health(judge, alive):
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is None:
            return
        if info is not None and self.note_enabled(info):
            lengths = self.parsed(judge, info, context_lengths) or {}
            for model in parsed:
                model.context_length = model.context_length or lengths.get(model.id, 0)
        self.models = parsed
