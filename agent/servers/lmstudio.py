"""LM Studio: /v1/models (health, and the models a request may name: only the loaded ones with
JIT loading off), /api/v0/models (state loaded / not-loaded, context lengths)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.servers.base import (
    Judge,
    ServerProbe,
    data_list,
    parse_openai_models,
    str_metadata,
    uint,
)
from corral.v1 import types_pb2


def parse_lmstudio_models(data: Any) -> list[types_pb2.ModelInfo]:
    """/api/v0/models: every downloaded model, with state loaded / not-loaded."""
    out = []
    for item in data_list(data):
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        out.append(
            types_pb2.ModelInfo(
                id=model_id,
                loaded=item.get("state") == "loaded",
                context_length=uint(
                    item.get("loaded_context_length") or item.get("max_context_length")
                ),
                metadata=str_metadata(
                    type=item.get("type"),
                    publisher=item.get("publisher"),
                    arch=item.get("arch"),
                    compatibility_type=item.get("compatibility_type"),
                    quantization=item.get("quantization"),
                    max_context_length=item.get("max_context_length"),
                ),
            )
        )
    return out


class LmStudioProbe(ServerProbe):
    server_type = "lmstudio"
    backend_type = types_pb2.BACKEND_TYPE_LMSTUDIO
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS)

    async def cycle(self, judge: Judge) -> None:
        v1, v0 = await asyncio.gather(
            self.client.get("/v1/models"), self.client.get("/api/v0/models")
        )
        if not self.health(judge, v1):
            return
        # /v1/models lists what a request may name: every downloaded model with JIT loading
        # on, only the loaded ones with it off (a request for another then fails).
        # /api/v0/models lists every downloaded model, with its state and context length.
        offered = self.parsed(judge, v1, parse_openai_models)
        if offered is None:
            return
        detailed = self.parsed(judge, v0, parse_lmstudio_models)
        if detailed is None:
            if not self.models:
                self.models = offered
            return
        ids = {m.id for m in offered}
        described = {m.id for m in detailed}
        self.models = [m for m in detailed if m.id in ids]
        self.models += [m for m in offered if m.id not in described]
