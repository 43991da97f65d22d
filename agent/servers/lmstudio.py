"""LM Studio: /v1/models (health), /api/v0/models (state loaded / not-loaded, context lengths)."""

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
        detailed = self.parsed(judge, v0, parse_lmstudio_models)
        if detailed is not None:
            self.models = detailed
        elif not self.models:
            # Without the detailed list, the OpenAI one still says what can be asked for
            # (LM Studio loads a listed model on demand).
            basic = self.parsed(judge, v1, parse_openai_models)
            if basic is not None:
                self.models = basic
