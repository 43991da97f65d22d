"""Docker Model Runner (port 12434): its OpenAI API lives under /engines (GET /engines/v1/models,
POST /engines/v1/chat/completions, or per engine /engines/llama.cpp/v1/...). Models load on
the first request, so every listed model is served."""

from __future__ import annotations

from agent.servers.base import Judge, ServerProbe, parse_openai_models
from corral.v1 import types_pb2


class DockerModelRunnerProbe(ServerProbe):
    server_type = "docker-model-runner"
    backend_type = types_pb2.BACKEND_TYPE_DOCKER_MODEL_RUNNER
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS)
    base_path = "/engines"

    async def cycle(self, judge: Judge) -> None:
        resp = await self.client.get("/engines/v1/models")
        if not self.health(judge, resp):
            return
        parsed = self.parsed(judge, resp, parse_openai_models)
        if parsed is not None:
            self.models = parsed
