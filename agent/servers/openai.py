"""Any OpenAI-compatible server: /v1/models."""

from __future__ import annotations

from agent.servers.base import (
    Judge,
    ServerProbe,
    parse_openai_models,
)
from corral.v1 import types_pb2


class OpenAIProbe(ServerProbe):
    server_type = "openai"
    backend_type = types_pb2.BACKEND_TYPE_OPENAI
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def cycle(self, judge: Judge) -> None:
        resp = await self.client.get("/v1/models")
        if not self.health(judge, resp):
            return
        parsed = self.parsed(judge, resp, parse_openai_models)
        if parsed is not None:
            self.models = parsed
