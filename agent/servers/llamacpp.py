"""llama.cpp server: /health (503 "Loading model" while loading), /v1/models (meta.n_ctx_train,
meta.size, aliases), /props (total_slots, default_generation_settings.n_ctx, build_info,
is_sleeping), and for load /metrics (--metrics: llamacpp:requests_processing,
llamacpp:requests_deferred) or else /slots (is_processing per slot).

A server started with --sleep-idle-seconds unloads its model when idle ("is_sleeping" in
/props); GET /slots and POST /v1/messages wake it, /metrics, /props, /health and /v1/models do
not. While it sleeps neither is sent: it runs nothing, so its load is zero.

In router mode (--models-dir or --models-preset; /props "role": "router") every model has a
state in /v1/models ("status": {"value": "loaded" | "loading" | "unloaded" ...}). /metrics and
/slots need ?model=ID there, and asking about an unloaded model loads it: load is the sum of
/metrics?model=ID over the models loaded now, and nothing else is asked per model. With
--no-models-autoload ("models_autoload": false) a request for an unloaded model fails, so only
loaded models are reported.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from agent.http import BackendClient, ParseError, ProbeResponse
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
    """/v1/models with llama.cpp's "meta" (n_ctx_train, size, n_params), sized by /props; each
    alias (--alias a,b) is a model too. A router that loads nothing on demand (/props
    "models_autoload": false) serves only its loaded models."""
    n_ctx = 0
    total_slots = 0
    on_demand = True
    if props:
        settings = props.get("default_generation_settings")
        if isinstance(settings, dict):
            n_ctx = uint(settings.get("n_ctx"))
        n_ctx = n_ctx or uint(props.get("n_ctx"))
        total_slots = uint(props.get("total_slots"))
        on_demand = not (is_router(props) and props.get("models_autoload") is False)
    out = []
    seen: set[str] = set()
    for item in data_list(data):
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        meta: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
        # Router mode lists several models, each with its own state.
        state = _state(item)
        loaded = state is None or state == "loaded"
        if not loaded and not on_demand:
            continue
        aliases = item.get("aliases")
        names = [model_id]
        if isinstance(aliases, list):
            names += [a for a in aliases if isinstance(a, str) and a and a != model_id]
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            out.append(
                types_pb2.ModelInfo(
                    id=name,
                    loaded=loaded,
                    context_length=n_ctx or uint(meta.get("n_ctx_train")),
                    size_bytes=uint(meta.get("size")),
                    metadata=str_metadata(
                        n_ctx_train=meta.get("n_ctx_train"),
                        n_params=meta.get("n_params"),
                        total_slots=total_slots or None,
                        alias_of=model_id if name != model_id else None,
                    ),
                )
            )
    return out


def loaded_router_models(data: Any) -> list[str]:
    """Router mode: the ids (not aliases) of the models /v1/models says are loaded now."""
    return [
        item["id"]
        for item in data_list(data)
        if isinstance(item.get("id"), str) and item["id"] and _state(item) == "loaded"
    ]


def is_router(props: dict[str, Any]) -> bool:
    return props.get("role") == "router"


def _state(item: dict[str, Any]) -> str | None:
    status = item.get("status")
    if isinstance(status, dict) and isinstance(status.get("value"), str):
        return str(status["value"])
    return None


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

    def __init__(self, client: BackendClient, *, slow_seconds: float) -> None:
        super().__init__(client, slow_seconds=slow_seconds)
        # Router mode or not, as /props last told (None until it has).
        self._router: bool | None = None

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

    async def messages_probe_allowed(self) -> bool:
        # POST /v1/messages wakes a sleeping server: not while /props says it sleeps.
        props = await self.client.get("/props")
        try:
            data = props.json() if props.ok else None
        except ParseError:
            data = None
        return not (isinstance(data, dict) and data.get("is_sleeping") is True)

    async def cycle(self, judge: Judge) -> None:
        health, models, props = await asyncio.gather(
            self.client.get("/health"), self.client.get("/v1/models"), self.client.get("/props")
        )
        if not self.health(judge, health):
            return
        props_data = self.json_of(judge, props)
        props_dict = props_data if isinstance(props_data, dict) else None
        if props_dict is not None:
            build = props_dict.get("build_info")
            if isinstance(build, str) and build:
                self.server_version = build
            self._router = is_router(props_dict)
        parsed = self.parsed(judge, models, parse_llamacpp_models, props_dict)
        if parsed is not None:
            self.models = parsed
        if self._router is None:
            return  # not known yet which load probes this server takes
        if self._router:
            if parsed is not None:
                await self._router_load(judge, loaded_router_models(models.json()))
            return
        sleeping = props_dict is not None and props_dict.get("is_sleeping") is True
        await self._server_load(judge, sleeping)

    async def _server_load(self, judge: Judge, sleeping: bool) -> None:
        if self.enabled("/metrics"):
            resp = await self.optional_get("/metrics")
        elif sleeping:
            self.load = types_pb2.BackendLoad()  # idle: that is why it sleeps
            return
        else:
            resp = await self.optional_get("/slots")
        if resp is None or not self.note_enabled(resp):
            return
        if resp.path == "/slots":
            load = self.parsed(judge, resp, parse_llamacpp_slots)
        else:
            load = self._metrics_load(judge, resp)
        if load is not None:
            self.load = load

    async def _router_load(self, judge: Judge, loaded: list[str]) -> None:
        """The sum of /metrics?model=ID over the loaded models (never another: that loads it)."""
        answers = await asyncio.gather(
            *(self.optional_get(f"/metrics?model={quote(model, safe='')}") for model in loaded)
        )
        loads = [
            self._metrics_load(judge, resp)
            for resp in answers
            if resp is not None and self.note_enabled(resp)
        ]
        known = [load for load in loads if load is not None]
        if len(known) < len(loads):
            return  # one failed (and said so): keep the last load rather than a partial sum
        kv = [load.kv_cache_usage for load in known if load.HasField("kv_cache_usage")]
        self.load = make_load(
            sum(load.running for load in known),
            sum(load.waiting for load in known),
            max(kv) if kv else None,
        )

    def _metrics_load(self, judge: Judge, resp: ProbeResponse) -> types_pb2.BackendLoad | None:
        return self.metrics_load(
            judge,
            resp,
            "llamacpp:requests_processing",
            "llamacpp:requests_deferred",
            "llamacpp:kv_cache_usage_ratio",
        )
