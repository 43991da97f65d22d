"""SGLang: /health, /v1/models, /metrics (sglang:num_running_reqs, sglang:num_queue_reqs,
sglang:token_usage; only with --enable-metrics); /get_model_info (model_path, is_generation) and
/get_server_info (version) for server facts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent.http import BackendClient, ParseError
from agent.servers.base import (
    NOT_ENABLED,
    Capability,
    Judge,
    ServerProbe,
    parse_openai_models,
)
from corral.v1 import types_pb2


class SglangProbe(ServerProbe):
    server_type = "sglang"
    backend_type = types_pb2.BACKEND_TYPE_SGLANG

    def __init__(self, client: BackendClient, *, slow_seconds: float) -> None:
        super().__init__(client, slow_seconds=slow_seconds)
        self.model_path = ""
        self.is_generation = True

    def extra_capabilities(self) -> Sequence[Capability]:
        if self.is_generation:
            return (types_pb2.CAPABILITY_COMPLETIONS,)
        return (types_pb2.CAPABILITY_EMBEDDINGS,)

    async def info(self) -> None:
        model_info, server_info = await asyncio.gather(
            self.client.get("/get_model_info", expected=NOT_ENABLED),
            self.client.get("/get_server_info", expected=NOT_ENABLED),
        )
        try:
            if model_info.ok:
                data = model_info.json()
                self.model_path = str(data.get("model_path") or "")
                self.is_generation = bool(data.get("is_generation", True))
            if server_info.ok:
                version = server_info.json().get("version")
                if version:
                    self.server_version = str(version)
        except (ParseError, AttributeError):
            self.client.parse_failed(model_info.path)

    async def cycle(self, judge: Judge) -> None:
        health, models, metrics = await asyncio.gather(
            self.client.get("/health"), self.client.get("/v1/models"), self.optional_get("/metrics")
        )
        if not self.health(judge, health):
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is not None:
            self.models = parsed
        elif not self.models and self.model_path:
            self.models = [types_pb2.ModelInfo(id=self.model_path, loaded=True)]
        if metrics is None or not self.note_enabled(metrics):
            return
        load = self.metrics_load(
            judge, metrics, "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage"
        )
        if load is not None:
            self.load = load
