"""llama.cpp server: /health (503 "Loading model" while loading), /v1/models (meta.n_ctx_train,
meta.size), /props (total_slots, default_generation_settings.n_ctx, build_info), and for load
/metrics (--metrics: llamacpp:requests_processing, llamacpp:requests_deferred) or else /slots
(is_processing per slot)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.http import ParseError, ProbeResponse
from agent.servers.base import (
    DEGRADED,
    LOADING,
    HealthState,
    Judge,
    ServerProbe,
    data_list,
    make_load,
    str_metadata,
    uint,
)
from corral.v1 import types_pb2


def parse_llamacpp_models(data: Any, props: dict[str, Any] | None) -> list[types_pb2.ModelInfo]:
    """/v1/models with llama.cpp's "meta" (n_ctx_train, size, n_params), sized by /props."""
    n_ctx = 0
    total_slots = 0
    if props:
        settings = props.get("default_generation_settings")
        if isinstance(settings, dict):
            n_ctx = uint(settings.get("n_ctx"))
        n_ctx = n_ctx or uint(props.get("n_ctx"))
        total_slots = uint(props.get("total_slots"))
    out = []
    for item in data_list(data):
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        meta: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
        status = item.get("status")
        loaded = True
        if isinstance(status, dict) and isinstance(status.get("value"), str):
            # Router mode lists several models, each with its own state.
            loaded = status["value"] == "loaded"
        out.append(
            types_pb2.ModelInfo(
                id=model_id,
                loaded=loaded,
                context_length=n_ctx or uint(meta.get("n_ctx_train")),
                size_bytes=uint(meta.get("size")),
                metadata=str_metadata(
                    n_ctx_train=meta.get("n_ctx_train"),
                    n_params=meta.get("n_params"),
                    total_slots=total_slots or None,
                ),
            )
        )
    return out


def parse_llamacpp_slots(data: Any) -> types_pb2.BackendLoad:
    """/slots: a list of slots; busy ones have is_processing true (state 1 before 2025)."""
    if not isinstance(data, list):
        raise ParseError("expected a list of slots")
    busy = 0
    for slot in data:
        if not isinstance(slot, dict):
            continue
        if slot.get("is_processing") is True or slot.get("state") == 1:
            busy += 1
    return make_load(busy, 0, None)


class LlamaCppProbe(ServerProbe):
    server_type = "llamacpp"
    backend_type = types_pb2.BACKEND_TYPE_LLAMACPP
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    def classify_failure(self, resp: ProbeResponse) -> tuple[HealthState, str]:
        if resp.status == 503:
            body = resp.body.lower()
            # {"error":{"code":503,"message":"Loading model","type":"unavailable_error"}};
            # before 2024 {"status":"loading model"}.
            if b"loading" in body:
                return LOADING, "loading model (GET /health: HTTP 503 Loading model)"
            # Older servers answered 503 {"status":"no slot available"} when every slot was busy.
            if b"no slot" in body:
                return DEGRADED, f"overloaded: {resp.describe()} (no slot available)"
        return super().classify_failure(resp)

    def speaks_messages(self, resp: ProbeResponse) -> bool | None:
        # llama-server rejects the empty body with 500 "'messages' is required" (a server
        # without the route answers 404): the route is there.
        if resp.status == 500 and b"is required" in resp.body:
            return True
        return super().speaks_messages(resp)

    async def cycle(self, judge: Judge) -> None:
        load_path = next((p for p in ("/metrics", "/slots") if self.enabled(p)), None)
        health, models, props, load_resp = await asyncio.gather(
            self.client.get("/health"),
            self.client.get("/v1/models"),
            self.client.get("/props"),
            self.optional_get(load_path) if load_path else _none(),
        )
        if not self.health(judge, health):
            return
        props_data = self.json_of(judge, props)
        if isinstance(props_data, dict):
            build = props_data.get("build_info")
            if isinstance(build, str) and build:
                self.server_version = build
        props_dict = props_data if isinstance(props_data, dict) else None
        parsed = self.parsed(judge, models, parse_llamacpp_models, props_dict)
        if parsed is not None:
            self.models = parsed
        if load_resp is None or not self.note_enabled(load_resp):
            return
        if load_resp.path == "/slots":
            load = self.parsed(judge, load_resp, parse_llamacpp_slots)
        else:
            load = self.metrics_load(
                judge,
                load_resp,
                "llamacpp:requests_processing",
                "llamacpp:requests_deferred",
                "llamacpp:kv_cache_usage_ratio",
            )
        if load is not None:
            self.load = load


async def _none() -> None:
    return None
