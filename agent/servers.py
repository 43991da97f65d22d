"""What the agent asks each kind of inference server, and how it reads the answers.

One class per server type. A probe cycle sends that type's requests concurrently (each bounded
by the probe timeout, so a hanging server costs one timeout, never a stalled loop) and turns the
answers into an Observation: a health verdict with its reason, plus models and load when they
were learnt this cycle. Models and load that could not be read keep their last known values,
so a flaky model list never makes a backend look as if it lost its models.

Endpoints, per the servers' own documentation:
- Ollama: GET / ("Ollama is running"), /api/version, /api/tags (available), /api/ps (loaded,
  with size_vram and context_length).
- vLLM: /health, /v1/models (max_model_len), /metrics (vllm:num_requests_running,
  vllm:num_requests_waiting, vllm:kv_cache_usage_perc; vllm:gpu_cache_usage_perc before
  v0.10); /version for the server version.
- SGLang: /health, /v1/models, /metrics (sglang:num_running_reqs, sglang:num_queue_reqs,
  sglang:token_usage; only with --enable-metrics); /get_model_info (model_path,
  is_generation) and /get_server_info (version) for server facts.
- llama.cpp server: /health (503 "Loading model" while loading), /v1/models (meta.n_ctx_train,
  meta.size), /props (total_slots, default_generation_settings.n_ctx, build_info), and for load
  /metrics (--metrics: llamacpp:requests_processing, llamacpp:requests_deferred) or else
  /slots (is_processing per slot).
- LM Studio: /v1/models (health), /api/v0/models (state loaded / not-loaded, context lengths).
- Any OpenAI-compatible server: /v1/models.

Capabilities. COMPLETIONS and EMBEDDINGS come from what each server type documents.
ANTHROPIC_MESSAGES (recent Ollama, vLLM, llama.cpp and LM Studio serve /v1/messages natively)
is learnt with one cheap request rather than guessed from version strings: POST /v1/messages
with an empty JSON object. A server with the route rejects it as invalid (400/422: no model,
no messages; nothing is generated); one without answers 404 or 405; a busy or failing server
(429, 5xx, no answer) tells nothing, and is asked again on the next cycle. It is asked when the
agent starts, after the server comes back, and every few minutes.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from agent import promtext
from agent.http import BackendClient, ParseError, ProbeResponse
from corral.v1 import types_pb2

log = logging.getLogger(__name__)

HEALTHY = types_pb2.HEALTH_STATE_HEALTHY
LOADING = types_pb2.HEALTH_STATE_LOADING
DEGRADED = types_pb2.HEALTH_STATE_DEGRADED
UNHEALTHY = types_pb2.HEALTH_STATE_UNHEALTHY

HealthState: TypeAlias = types_pb2.HealthState.ValueType
Capability: TypeAlias = types_pb2.Capability.ValueType

# Server facts (version, capabilities) are asked again this often, and after a recovery.
INFO_REFRESH_SECONDS = 300.0
# Endpoints that answered 404/501 (not enabled on this server) are tried again this often.
UNSUPPORTED_RETRY_SECONDS = 60.0
_NOT_ENABLED = (404, 501)


@dataclass
class Observation:
    """One probe cycle's findings, before hysteresis."""

    health: HealthState
    reason: str
    # None when not learnt this cycle (the caller keeps what it knew).
    models: list[types_pb2.ModelInfo] | None = None
    load: types_pb2.BackendLoad | None = None


@dataclass
class _Judge:
    """Collects problems seen in one cycle; the worst kind wins and names the reason."""

    slow_seconds: float
    problems: dict[HealthState, list[str]] = field(default_factory=dict)

    def add(self, state: HealthState, reason: str) -> None:
        self.problems.setdefault(state, []).append(reason)

    def slow(self, *responses: ProbeResponse) -> None:
        for resp in responses:
            if resp.answered and resp.seconds > self.slow_seconds:
                self.add(DEGRADED, f"slow: {resp.method} {resp.path} over {self.slow_seconds:g}s")

    def verdict(self) -> tuple[HealthState, str]:
        for state in (UNHEALTHY, LOADING, DEGRADED):
            if state in self.problems:
                return state, "; ".join(self.problems[state])
        return HEALTHY, "ok"


class ServerProbe(abc.ABC):
    """Probes one server of one type; keeps what it last learnt."""

    kind: ClassVar[str]
    backend_type: ClassVar[types_pb2.BackendType.ValueType]
    static_capabilities: ClassVar[tuple[Capability, ...]] = ()

    def __init__(self, client: BackendClient, *, slow_seconds: float) -> None:
        self.client = client
        self.slow_seconds = slow_seconds
        self.models: list[types_pb2.ModelInfo] = []
        self.load = types_pb2.BackendLoad()
        self.server_version = ""
        self.anthropic_native = False
        self._info_at: float | None = None
        self._unsupported: dict[str, float] = {}

    @property
    def capabilities(self) -> list[Capability]:
        caps = set(self.static_capabilities) | set(self.extra_capabilities())
        if self.anthropic_native:
            caps.add(types_pb2.CAPABILITY_ANTHROPIC_MESSAGES)
        return sorted(caps)

    def extra_capabilities(self) -> Sequence[Capability]:
        return ()

    async def probe(self) -> Observation:
        """One cycle: the type's probes, plus server facts when they are due."""
        now = time.monotonic()
        if self._info_at is None or now - self._info_at > INFO_REFRESH_SECONDS:
            judge = _Judge(self.slow_seconds)
            _, info_ok = await asyncio.gather(self.cycle(judge), self._refresh_info())
            if info_ok:
                self._info_at = now
        else:
            judge = _Judge(self.slow_seconds)
            await self.cycle(judge)
        health, reason = judge.verdict()
        if health in (UNHEALTHY, LOADING):
            # Ask again once it is back: it may have been upgraded or restarted differently.
            self._info_at = None
        return Observation(health, reason, list(self.models), _copy(self.load))

    @abc.abstractmethod
    async def cycle(self, judge: _Judge) -> None:
        """Send this type's probes; record problems in judge, findings in self."""

    async def info(self) -> None:  # noqa: B027  # optional hook; most types have no facts
        """Type-specific server facts (version); asked at start, after recovery, rarely."""

    async def _refresh_info(self) -> bool:
        native, _ = await asyncio.gather(self._probe_anthropic(), self.info())
        if native is None:
            return False
        if native != self.anthropic_native:
            log.info(
                "%s: Anthropic Messages (/v1/messages) %s natively",
                self.client.base_url,
                "spoken" if native else "not spoken",
            )
        self.anthropic_native = native
        return True

    async def _probe_anthropic(self) -> bool | None:
        """True/False when the server told us, None when it could not (down, 5xx)."""
        resp = await self.client.post_json("/v1/messages", {}, expected=range(400, 600))
        if resp.status in (400, 422) or (resp.status is not None and 200 <= resp.status < 300):
            # Servers that answer unknown routes with 200 and an error body (older LM Studio).
            return b"unexpected endpoint" not in resp.body.lower()
        if resp.status in (401, 403, 404, 405):
            return False
        # No answer, busy (429) or failing (5xx): it did not tell; ask again later.
        return None

    # Helpers for subclasses.

    def metrics_load(
        self, judge: _Judge, resp: ProbeResponse, running: str, waiting: str, *kv_cache: str
    ) -> types_pb2.BackendLoad | None:
        """Load from the server's Prometheus page: running, waiting and KV-cache series
        (KV-cache names newest spelling first). Unreadable pages degrade, never fail."""
        judge.slow(resp)
        if not resp.ok:
            judge.add(DEGRADED, resp.describe())
            return None
        try:
            samples = promtext.read_samples(resp.text(), (running, waiting, *kv_cache))
        except ParseError as exc:
            self.client.parse_failed(resp.path)
            judge.add(DEGRADED, f"{resp.method} {resp.path}: {exc}")
            return None
        return _load(
            promtext.total(samples, running),
            promtext.total(samples, waiting),
            promtext.highest(samples, *kv_cache) if kv_cache else None,
        )

    def health(self, judge: _Judge, resp: ProbeResponse) -> bool:
        """Judge the server's main health answer; True when it is fine."""
        judge.slow(resp)
        if resp.ok:
            return True
        state, reason = self.classify_failure(resp)
        judge.add(state, reason)
        return False

    def classify_failure(self, resp: ProbeResponse) -> tuple[HealthState, str]:
        if resp.status == 429:
            return DEGRADED, f"overloaded: {resp.describe()}"
        if resp.status in (401, 403):
            return UNHEALTHY, f"{resp.describe()} (check the backend API key)"
        return UNHEALTHY, resp.describe()

    def json_of(self, judge: _Judge, resp: ProbeResponse) -> Any:
        """The JSON body of a secondary probe, or None (and a DEGRADED reason) when missing."""
        judge.slow(resp)
        if not resp.ok:
            judge.add(DEGRADED, resp.describe())
            return None
        try:
            return resp.json()
        except ParseError as exc:
            self.client.parse_failed(resp.path)
            judge.add(DEGRADED, f"{resp.method} {resp.path}: {exc}")
            return None

    def parsed(self, judge: _Judge, resp: ProbeResponse, parse: Any, *args: Any) -> Any:
        """parse(json, *args) of a secondary probe's body; None when it failed."""
        data = self.json_of(judge, resp)
        if data is None:
            return None
        try:
            return parse(data, *args)
        except (ParseError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.client.parse_failed(resp.path)
            judge.add(DEGRADED, f"{resp.method} {resp.path}: unexpected body ({exc})")
            return None

    def enabled(self, path: str) -> bool:
        """False while path is known not to be served (404/501), retried now and then."""
        since = self._unsupported.get(path)
        return since is None or time.monotonic() - since > UNSUPPORTED_RETRY_SECONDS

    def note_enabled(self, resp: ProbeResponse) -> bool:
        """Record whether an optional endpoint is served; True when it answered 2xx."""
        if resp.status in _NOT_ENABLED:
            if resp.path not in self._unsupported:
                log.info("%s: %s is not served here; skipping it", self.client.base_url, resp.path)
            self._unsupported[resp.path] = time.monotonic()
            return False
        self._unsupported.pop(resp.path, None)
        return True

    async def optional_get(self, path: str) -> ProbeResponse | None:
        if not self.enabled(path):
            return None
        return await self.client.get(path, expected=_NOT_ENABLED)


def _copy(load: types_pb2.BackendLoad) -> types_pb2.BackendLoad:
    out = types_pb2.BackendLoad()
    out.CopyFrom(load)
    return out


def _load(running: float | None, waiting: float | None, kv: float | None) -> types_pb2.BackendLoad:
    load = types_pb2.BackendLoad(running=int(running or 0), waiting=int(waiting or 0))
    if kv is not None:
        load.kv_cache_usage = min(max(kv, 0.0), 1.0)
    return load


def _uint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return 0
    return int(value)


def _str_metadata(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v not in (None, "", [], {})}


def _data_list(data: Any, key: str = "data") -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ParseError(f"expected an object with a {key!r} list")
    return [item for item in data[key] if isinstance(item, dict)]


def parse_openai_models(data: Any) -> list[types_pb2.ModelInfo]:
    """GET /v1/models: {"object":"list","data":[{"id":..., "max_model_len"?: N, ...}]}."""
    out = []
    for item in _data_list(data):
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        context = (
            item.get("max_model_len") or item.get("context_length") or item.get("context_window")
        )
        out.append(
            types_pb2.ModelInfo(
                id=model_id,
                loaded=True,
                context_length=_uint(context),
                metadata=_str_metadata(
                    owned_by=item.get("owned_by"), root=item.get("root"), parent=item.get("parent")
                ),
            )
        )
    return out


# Ollama


def parse_ollama_models(
    tags: Any, ps: Any | None, previous: Sequence[types_pb2.ModelInfo]
) -> list[types_pb2.ModelInfo]:
    """/api/tags (available) joined with /api/ps (loaded; None when it failed this cycle)."""
    running: dict[str, dict[str, Any]] = {}
    if ps is not None:
        for item in _data_list(ps, "models"):
            for key in ("name", "model"):
                if isinstance(item.get(key), str):
                    running[item[key]] = item
    was_loaded = {m.id for m in previous if m.loaded}
    out = []
    seen = set()
    for item in _data_list(tags, "models"):
        name = item.get("name") or item.get("model")
        if not isinstance(name, str) or not name or name in seen:
            continue
        seen.add(name)
        details: dict[str, Any] = item["details"] if isinstance(item.get("details"), dict) else {}
        live = running.get(name)
        model = types_pb2.ModelInfo(
            id=name,
            loaded=(live is not None) if ps is not None else name in was_loaded,
            size_bytes=_uint(item.get("size")),
            metadata=_str_metadata(
                family=details.get("family"),
                parameter_size=details.get("parameter_size"),
                quantization_level=details.get("quantization_level"),
                format=details.get("format"),
            ),
        )
        if live is not None:
            model.context_length = _uint(live.get("context_length"))
            model.vram_bytes = _uint(live.get("size_vram"))
        out.append(model)
    # A model can run without being listed (pulled then removed while loaded): still served.
    for name, live in running.items():
        if name not in seen and name == live.get("name", name):
            seen.add(name)
            out.append(
                types_pb2.ModelInfo(
                    id=name,
                    loaded=True,
                    size_bytes=_uint(live.get("size")),
                    vram_bytes=_uint(live.get("size_vram")),
                    context_length=_uint(live.get("context_length")),
                )
            )
    return out


class OllamaProbe(ServerProbe):
    kind = "ollama"
    backend_type = types_pb2.BACKEND_TYPE_OLLAMA
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS)

    def classify_failure(self, resp: ProbeResponse) -> tuple[HealthState, str]:
        # Ollama answers 503 when its request queue is full (OLLAMA_MAX_QUEUE): busy, not dead.
        if resp.status == 503:
            return DEGRADED, f"overloaded: {resp.describe()}"
        return super().classify_failure(resp)

    async def cycle(self, judge: _Judge) -> None:
        root, version, tags, ps = await asyncio.gather(
            self.client.get("/"),
            self.client.get("/api/version"),
            self.client.get("/api/tags"),
            self.client.get("/api/ps"),
        )
        if not self.health(judge, root):
            return
        ver = self.parsed(judge, version, lambda d: str(d["version"]))
        if ver:
            self.server_version = ver
        ps_data = self.json_of(judge, ps)
        models = self.parsed(judge, tags, parse_ollama_models, ps_data, self.models)
        if models is not None:
            self.models = models


# vLLM


class VllmProbe(ServerProbe):
    kind = "vllm"
    backend_type = types_pb2.BACKEND_TYPE_VLLM
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def info(self) -> None:
        resp = await self.client.get("/version", expected=_NOT_ENABLED)
        if resp.ok:
            try:
                self.server_version = str(resp.json()["version"])
            except (ParseError, KeyError, TypeError):
                self.client.parse_failed(resp.path)

    async def cycle(self, judge: _Judge) -> None:
        health, models, metrics = await asyncio.gather(
            self.client.get("/health"), self.client.get("/v1/models"), self.client.get("/metrics")
        )
        if not self.health(judge, health):
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is not None:
            self.models = parsed
        load = self.metrics_load(
            judge,
            metrics,
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",  # the older name
        )
        if load is not None:
            self.load = load


# SGLang


class SglangProbe(ServerProbe):
    kind = "sglang"
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
            self.client.get("/get_model_info", expected=_NOT_ENABLED),
            self.client.get("/get_server_info", expected=_NOT_ENABLED),
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

    async def cycle(self, judge: _Judge) -> None:
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


# llama.cpp


def parse_llamacpp_models(data: Any, props: dict[str, Any] | None) -> list[types_pb2.ModelInfo]:
    """/v1/models with llama.cpp's "meta" (n_ctx_train, size, n_params), sized by /props."""
    n_ctx = 0
    total_slots = 0
    if props:
        settings = props.get("default_generation_settings")
        if isinstance(settings, dict):
            n_ctx = _uint(settings.get("n_ctx"))
        n_ctx = n_ctx or _uint(props.get("n_ctx"))
        total_slots = _uint(props.get("total_slots"))
    out = []
    for item in _data_list(data):
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
                context_length=n_ctx or _uint(meta.get("n_ctx_train")),
                size_bytes=_uint(meta.get("size")),
                metadata=_str_metadata(
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
    return _load(busy, 0, None)


class LlamaCppProbe(ServerProbe):
    kind = "llamacpp"
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

    async def cycle(self, judge: _Judge) -> None:
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


# LM Studio


def parse_lmstudio_models(data: Any) -> list[types_pb2.ModelInfo]:
    """/api/v0/models: every downloaded model, with state loaded / not-loaded."""
    out = []
    for item in _data_list(data):
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        out.append(
            types_pb2.ModelInfo(
                id=model_id,
                loaded=item.get("state") == "loaded",
                context_length=_uint(
                    item.get("loaded_context_length") or item.get("max_context_length")
                ),
                metadata=_str_metadata(
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
    kind = "lmstudio"
    backend_type = types_pb2.BACKEND_TYPE_LMSTUDIO
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS)

    async def cycle(self, judge: _Judge) -> None:
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


# Any OpenAI-compatible server


class OpenAIProbe(ServerProbe):
    kind = "openai"
    backend_type = types_pb2.BACKEND_TYPE_OPENAI
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def cycle(self, judge: _Judge) -> None:
        resp = await self.client.get("/v1/models")
        if not self.health(judge, resp):
            return
        parsed = self.parsed(judge, resp, parse_openai_models)
        if parsed is not None:
            self.models = parsed


PROBES: dict[str, type[ServerProbe]] = {
    cls.kind: cls
    for cls in (OllamaProbe, VllmProbe, SglangProbe, LlamaCppProbe, LmStudioProbe, OpenAIProbe)
}
