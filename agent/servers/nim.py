"""NVIDIA NIM for LLMs (port 8000): GET /v1/health/ready (200 once the model is loaded, 503
before), /v1/models (max_model_len), /v1/version ({"release", "api"}), and /metrics
(num_requests_running, num_requests_waiting, gpu_cache_usage_perc)."""

from __future__ import annotations

import asyncio

from agent.http import ParseError, ProbeResponse
from agent.servers.base import (
    LOADING,
    NOT_ENABLED,
    HealthState,
    Judge,
    ServerProbe,
    parse_openai_models,
)
from corral.v1 import types_pb2


class NimProbe(ServerProbe):
    server_type = "nim"
    backend_type = types_pb2.BACKEND_TYPE_NIM
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    def classify_failure(self, resp: ProbeResponse) -> tuple[HealthState, str]:
        if resp.status == 503:
            # Not ready: the container is up (/v1/health/live) but the model is still loading.
            return LOADING, f"loading model ({resp.describe()})"
        return super().classify_failure(resp)

    async def info(self) -> None:
        resp = await self.client.get("/v1/version", expected=NOT_ENABLED)
        if resp.ok:
            try:
                self.server_version = str(resp.json()["release"])
            except (ParseError, KeyError, TypeError):
                self.client.parse_failed(resp.path)

    async def cycle(self, judge: Judge) -> None:
        ready, models, metrics = await asyncio.gather(
            self.client.get("/v1/health/ready"),
            self.client.get("/v1/models"),
            self.optional_get("/metrics"),
        )
        if not self.health(judge, ready):
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is not None:
            self.models = parsed
        if metrics is None or not self.note_enabled(metrics):
            return
        load = self.metrics_load(
            judge, metrics, "num_requests_running", "num_requests_waiting", "gpu_cache_usage_perc"
        )
        if load is not None:
            self.load = load
