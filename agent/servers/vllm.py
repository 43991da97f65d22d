"""vLLM: /health, /v1/models (max_model_len), /metrics (vllm:num_requests_running,
vllm:num_requests_waiting, vllm:kv_cache_usage_perc; vllm:gpu_cache_usage_perc before v0.10);
/version for the server version."""

from __future__ import annotations

import asyncio

from agent.http import ParseError
from agent.servers.base import (
    NOT_ENABLED,
    Judge,
    ServerProbe,
    parse_openai_models,
)
from corral.v1 import types_pb2


class VllmProbe(ServerProbe):
    server_type = "vllm"
    backend_type = types_pb2.BACKEND_TYPE_VLLM
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def info(self) -> None:
        resp = await self.client.get("/version", expected=NOT_ENABLED)
        if resp.ok:
            try:
                self.server_version = str(resp.json()["version"])
            except (ParseError, KeyError, TypeError):
                self.client.parse_failed(resp.path)

    async def cycle(self, judge: Judge) -> None:
        health, models, metrics = await asyncio.gather(
            self.client.get("/health"), self.client.get("/v1/models"), self.client.get("/metrics")
        )
        if not self.health(judge, health):
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is not None:
            self.models = parsed
        load = self.metrics_load(
            judge,
            metrics,
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",  # the older name
        )
        if load is not None:
            self.load = load
