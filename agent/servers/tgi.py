"""Hugging Face Text Generation Inference: GET /health, /info (model_id, max_input_tokens,
max_total_tokens, version), /metrics (tgi_batch_current_size running, tgi_queue_size waiting).
One model per server; its own API: POST /generate, /generate_stream, /tokenize."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.http import ParseError
from agent.servers.base import Judge, ServerProbe, str_metadata, uint
from corral.v1 import types_pb2


def parse_tgi_info(data: Any) -> list[types_pb2.ModelInfo]:
    """/info: the one model this server runs."""
    if not isinstance(data, dict) or not isinstance(data.get("model_id"), str):
        raise ParseError("expected an object with a model_id")
    return [
        types_pb2.ModelInfo(
            id=data["model_id"],
            loaded=True,
            context_length=uint(data.get("max_total_tokens") or data.get("max_input_tokens")),
            metadata=str_metadata(
                model_dtype=data.get("model_dtype"),
                max_input_tokens=data.get("max_input_tokens"),
                max_concurrent_requests=data.get("max_concurrent_requests"),
            ),
        )
    ]


class TgiProbe(ServerProbe):
    server_type = "tgi"
    backend_type = types_pb2.BACKEND_TYPE_TGI
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def cycle(self, judge: Judge) -> None:
        health, info, metrics = await asyncio.gather(
            self.client.get("/health"), self.client.get("/info"), self.client.get("/metrics")
        )
        if not self.health(judge, health):
            return
        facts = self.json_of(judge, info)
        if isinstance(facts, dict) and isinstance(facts.get("version"), str):
            self.server_version = facts["version"]
        parsed = self.parsed(judge, info, parse_tgi_info)
        if parsed is not None:
            self.models = parsed
        load = self.metrics_load(judge, metrics, "tgi_batch_current_size", "tgi_queue_size")
        if load is not None:
            self.load = load
