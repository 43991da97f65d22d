"""LMDeploy's api_server (port 23333): GET /health, /v1/models (owned_by "lmdeploy"), and with
--enable-metrics /metrics (lmdeploy:num_requests_running, lmdeploy:num_requests_waiting,
lmdeploy:gpu_cache_usage_perc). Its own API: POST /generate, /v1/encode."""

from __future__ import annotations

import asyncio

from agent.servers.base import Judge, ServerProbe, parse_openai_models
from corral.v1 import types_pb2


class LMDeployProbe(ServerProbe):
    server_type = "lmdeploy"
    backend_type = types_pb2.BACKEND_TYPE_LMDEPLOY
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def cycle(self, judge: Judge) -> None:
        health, models, metrics = await asyncio.gather(
            self.client.get("/health"), self.client.get("/v1/models"), self.optional_get("/metrics")
        )
        if not self.health(judge, health):
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is not None:
            self.models = parsed
        if metrics is None or not self.note_enabled(metrics):
            return
        load = self.metrics_load(
            judge,
            metrics,
            "lmdeploy:num_requests_running",
            "lmdeploy:num_requests_waiting",
            "lmdeploy:gpu_cache_usage_perc",
        )
        if load is not None:
            self.load = load
