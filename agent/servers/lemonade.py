"""Lemonade Server: its OpenAI API lives under /api (GET /api/v1/health with model_loaded and
all_models_loaded, /api/v1/models (downloaded models, owned_by "lemonade"), and
/api/v1/system-info for the machine). Models load on the first request that names them."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.servers.base import Judge, ServerProbe, parse_openai_models
from corral.v1 import types_pb2


def loaded_names(health: Any) -> set[str]:
    """/api/v1/health: model_loaded (the last one) and all_models_loaded[].model_name."""
    if not isinstance(health, dict):
        return set()
    names = {health["model_loaded"]} if isinstance(health.get("model_loaded"), str) else set()
    for item in health.get("all_models_loaded") or ():
        if isinstance(item, dict) and isinstance(item.get("model_name"), str):
            names.add(item["model_name"])
    return names


class LemonadeProbe(ServerProbe):
    server_type = "lemonade"
    backend_type = types_pb2.BACKEND_TYPE_LEMONADE
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS)
    base_path = "/api"

    async def cycle(self, judge: Judge) -> None:
        health, models = await asyncio.gather(
            self.client.get("/api/v1/health"), self.client.get("/api/v1/models")
        )
        if not self.health(judge, health):
            return
        facts = self.json_of(judge, health)
        if isinstance(facts, dict) and isinstance(facts.get("version"), str):
            self.server_version = facts["version"]
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is None:
            return
        loaded = loaded_names(facts)
        for model in parsed:
            # Listed models are downloaded and load on demand; say which are in memory now.
            model.metadata["in_memory"] = "true" if model.id in loaded else "false"
        self.models = parsed
