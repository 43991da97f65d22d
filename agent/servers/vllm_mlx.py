"""vLLM-MLX (Apple Silicon, port 8000): one model; GET /health ({"status": "healthy",
"model_loaded", "model_name", "engine_type"}), /v1/models; serves /v1/messages natively."""

from __future__ import annotations

import asyncio

from agent.servers.base import LOADING, Judge, ServerProbe, parse_openai_models
from corral.v1 import types_pb2


class VllmMlxProbe(ServerProbe):
    server_type = "vllm-mlx"
    backend_type = types_pb2.BACKEND_TYPE_VLLM_MLX
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def cycle(self, judge: Judge) -> None:
        health, models = await asyncio.gather(
            self.client.get("/health"), self.client.get("/v1/models")
        )
        if not self.health(judge, health):
            return
        facts = self.json_of(judge, health)
        if isinstance(facts, dict) and facts.get("model_loaded") is False:
            judge.add(LOADING, "no model loaded yet (GET /health: model_loaded false)")
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is not None:
            self.models = parsed
