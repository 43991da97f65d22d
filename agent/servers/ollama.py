"""Ollama: GET / ("Ollama is running"), /api/version, /api/tags (available), /api/ps (loaded,
with size_vram and context_length; since 0.1.38)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from agent.http import ProbeResponse
from agent.servers.base import (
    DEGRADED,
    HealthState,
    Judge,
    ServerProbe,
    data_list,
    str_metadata,
    uint,
)
from corral.v1 import types_pb2


def parse_ollama_models(
    tags: Any, ps: Any | None, previous: Sequence[types_pb2.ModelInfo]
) -> list[types_pb2.ModelInfo]:
    """/api/tags (available) joined with /api/ps (loaded; None when it failed this cycle).
    Before 0.1.38 Ollama answered {"models": null} when it had none."""
    running: dict[str, dict[str, Any]] = {}
    if ps is not None:
        for item in data_list(ps, "models", null_is_empty=True):
            for key in ("name", "model"):
                if isinstance(item.get(key), str):
                    running[item[key]] = item
    was_loaded = {m.id for m in previous if m.loaded}
    out = []
    seen = set()
    for item in data_list(tags, "models", null_is_empty=True):
        name = item.get("name") or item.get("model")
        if not isinstance(name, str) or not name or name in seen:
            continue
        seen.add(name)
        details: dict[str, Any] = item["details"] if isinstance(item.get("details"), dict) else {}
        live = running.get(name)
        model = types_pb2.ModelInfo(
            id=name,
            loaded=(live is not None) if ps is not None else name in was_loaded,
            size_bytes=uint(item.get("size")),
            metadata=str_metadata(
                family=details.get("family"),
                parameter_size=details.get("parameter_size"),
                quantization_level=details.get("quantization_level"),
                format=details.get("format"),
            ),
        )
        if live is not None:
            model.context_length = uint(live.get("context_length"))
            model.vram_bytes = uint(live.get("size_vram"))
        out.append(model)
    # A model can run without being listed (pulled then removed while loaded): still served.
    for name, live in running.items():
        if name not in seen and name == live.get("name", name):
            seen.add(name)
            out.append(
                types_pb2.ModelInfo(
                    id=name,
                    loaded=True,
                    size_bytes=uint(live.get("size")),
                    vram_bytes=uint(live.get("size_vram")),
                    context_length=uint(live.get("context_length")),
                )
            )
    return out


class OllamaProbe(ServerProbe):
    server_type = "ollama"
    backend_type = types_pb2.BACKEND_TYPE_OLLAMA
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS)

    def classify_failure(self, resp: ProbeResponse) -> tuple[HealthState, str]:
        # Ollama answers 503 when its request queue is full (OLLAMA_MAX_QUEUE): busy, not dead.
        if resp.status == 503:
            return DEGRADED, f"overloaded: {resp.describe()}"
        return super().classify_failure(resp)

    async def cycle(self, judge: Judge) -> None:
        root, version, tags, ps = await asyncio.gather(
            self.client.get("/"),
            self.client.get("/api/version"),
            self.client.get("/api/tags"),
            self.optional_get("/api/ps"),
        )
        if not self.health(judge, root):
            return
        ver = self.parsed(judge, version, lambda d: str(d["version"]))
        if ver:
            self.server_version = ver
        # /api/ps came with 0.1.38: before, 404 (loaded flags are then kept as they were).
        ps_data = self.json_of(judge, ps) if ps is not None and self.note_enabled(ps) else None
        models = self.parsed(judge, tags, parse_ollama_models, ps_data, self.models)
        if models is not None:
            self.models = models
