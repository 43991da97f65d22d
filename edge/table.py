"""The routing table: a snapshot turned into per-model candidate lists, built once per apply.

Backend runtime state (this edge's in-flight count, passive-health failures, ejection) lives
in BackendState objects that outlive snapshots, so a new snapshot never resets the counts
of requests already in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from corral.kv_pressure import KV_NEARLY_FULL, kv_load_factor
from corral.v1 import types_pb2

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from edge.deadlines import Deadline

HEALTHY = types_pb2.HEALTH_STATE_HEALTHY
DEGRADED = types_pb2.HEALTH_STATE_DEGRADED
CAPABILITY_ANTHROPIC_MESSAGES = types_pb2.CAPABILITY_ANTHROPIC_MESSAGES
_MAX_WEIGHT = 1e6
_MAX_CACHED_URLS = 64


@dataclass(frozen=True, slots=True)
class ReportAging:
    """How this edge reads the load a backend reports (sampled seconds before it arrives).

    window: how far back a report's sample may lie; this edge's own requests that were in
    flight then are already in it, so they are not counted twice (nor after they finished).
    half_life: the rest (other edges' requests) counts half as much every half_life seconds
    after the report arrived, so a stale sample fades instead of pinning a backend as busy.
    """

    window: float = 5.0
    half_life: float = 2.0
    # Seconds, monotonic (a simulation passes its virtual clock).
    clock: Callable[[], float] = time.monotonic


class BackendState:
    """One backend as this edge sees it: spec and reported status plus local counters."""

    __slots__ = (
        "aging",
        "alive",
        "api_version",
        "awaiting",
        "backend_type",
        "base_url",
        "contexts",
        "ejected_until",
        "ejections",
        "failures",
        "headers",
        "health",
        "inflight",
        "kv_factor",
        "kv_usage",
        "last_at_level",
        "max_concurrency",
        "name",
        "name_bytes",
        "native_messages",
        "priority",
        "provider",
        "raw_reported",
        "reported",
        "reported_at",
        "slots",
        "urls",
        "weight",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.base_url = ""
        # Upstream path -> parsed URL (aiohttp would parse the string on every request).
        self.urls: dict[str, URL] = {}
        self.weight = 1.0
        self.priority = 0
        self.max_concurrency = 0
        self.health = types_pb2.HEALTH_STATE_UNSPECIFIED
        # The server type (types_pb2.BackendType), and whether it answers /v1/messages itself.
        self.backend_type = types_pb2.BACKEND_TYPE_UNSPECIFIED
        self.native_messages = False
        # Model id -> context window in tokens, where the backend reports one.
        self.contexts: dict[str, int] = {}
        # Other edges' requests (running + waiting as the backend reports them, less what this
        # edge had in flight around the sample), counted from reported_at on, fading by aging.
        self.reported = 0.0
        self.reported_at = 0.0
        self.aging: ReportAging | None = None
        # The raw running + waiting of the last report, to notice a new one.
        self.raw_reported = -1
        # last_at_level[k]: when this edge last had more than k requests in flight here.
        self.last_at_level: list[float] = []
        # Requests the server runs at once (llama.cpp slots, else max_concurrency; 0 unknown),
        # and the fraction of its KV cache in use (-1 unknown).
        self.slots = 0
        self.kv_usage = -1.0
        # How many times its load counts: more than once when its KV cache is nearly full
        # (corral/kv_pressure.py).
        self.kv_factor = 1.0
        self.inflight = 0
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        # Up (healthy or degraded) and present in the snapshot in force, drained or not.
        self.alive = False
        # Deadlines of attempts still waiting for the first byte from this backend: expired
        # at once when the backend goes down, so they are retried elsewhere.
        self.awaiting: set[Deadline] = set()
        # What it is sent (its credential resolved on this edge); None: missing here.
        self.headers: CIMultiDictProxy[str] | None = None
        # A hosted provider's type (providers_pb2.ProviderType), 0 for a local server.
        self.provider = 0
        self.api_version = ""

    def update(self, backend: types_pb2.Backend, aging: ReportAging | None = None) -> None:
        spec = backend.spec
        base_url = spec.url.rstrip("/")
        if base_url != self.base_url:
            self.base_url = base_url
            self.urls = {}
        weight = spec.weight
        # 0 means the default; NaN, negative or absurd weights must not break the arithmetic.
        self.weight = min(weight, _MAX_WEIGHT) if weight > 0 else 1.0
        self.priority = spec.priority
        self.max_concurrency = spec.max_concurrency
        self.backend_type = spec.type
        self.provider = spec.provider
        self.api_version = spec.api_version
        self.native_messages = CAPABILITY_ANTHROPIC_MESSAGES in backend.status.capabilities
        self.contexts = {m.id: m.context_length for m in backend.status.models if m.context_length}
        self.health = backend.status.health
        self.alive = self.health in (HEALTHY, DEGRADED)
        load = backend.status.load
        self.kv_usage = load.kv_cache_usage if load.HasField("kv_cache_usage") else -1.0
        server_slots = _slots(backend)
        # KV memory limits a server that reports no slots (vLLM, SGLang, ...); llama.cpp's
        # slots each keep their last prompt in their part of the cache: its slots tell.
        self.kv_factor = 1.0 if server_slots else kv_load_factor(self.kv_usage)
        self.slots = server_slots or self.max_concurrency
        raw = load.running + load.waiting
        if raw != self.raw_reported:
            self.raw_reported = raw
            self.aging = aging
            self.reported_at = now = self.now()
            mine = self.peak_inflight(now - aging.window) if aging is not None else 0
            self.reported = float(max(0, raw - mine))

    def now(self) -> float:
        aging = self.aging
        return aging.clock() if aging is not None else time.monotonic()

    def started(self) -> None:
        self.inflight += 1

    def finished(self) -> None:
        """One of this edge's requests here ended: remember when it was this busy."""
        level = self.inflight - 1
        if level >= 0:
            marks = self.last_at_level
            if len(marks) <= level:
                marks.extend([0.0] * (level + 1 - len(marks)))
            marks[level] = self.now()
        self.inflight = level

    def peak_inflight(self, since: float) -> int:
        """The most requests this edge had in flight here at any moment since `since`."""
        peak = self.inflight
        marks = self.last_at_level
        for level in range(len(marks) - 1, peak - 1, -1):
            if marks[level] >= since:
                return level + 1
        return peak

    def others(self) -> float:
        """Other edges' requests here as last reported, faded with the report's age."""
        reported = self.reported
        aging = self.aging
        if not reported or aging is None:
            return reported
        age = aging.clock() - self.reported_at
        return reported * 0.5 ** (age / aging.half_life) if aging.half_life > 0 else reported

    def load(self) -> float:
        """Requests here (this edge's and others'), counted more than once when the KV cache
        is nearly full: a new one would wait for memory there and evict cached prefixes."""
        return (self.inflight + self.others()) * self.kv_factor

    def free_slot(self) -> bool:
        """A request sent now starts at once: a slot is free and the KV cache has room."""
        return self.slots > 0 and self.load() < self.slots and self.kv_usage < KV_NEARLY_FULL

    def url(self, path: str) -> URL:
        """The backend's URL for a path, parsed once (native pass-through paths vary, so
        the cache is bounded)."""
        url = self.urls.get(path)
        if url is None:
            url = URL(self.base_url + path)
            if len(self.urls) < _MAX_CACHED_URLS:
                self.urls[path] = url
        return url

    def has_capacity(self) -> bool:
        return self.max_concurrency == 0 or self.inflight < self.max_concurrency

    def __repr__(self) -> str:
        return f"BackendState({self.name!r}, inflight={self.inflight})"


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """Where one public model name can go."""

    name: str
    # HEALTHY, undrained backends grouped by priority, best tier first.
    tiers: tuple[tuple[BackendState, ...], ...]
    # DEGRADED, undrained backends: a last resort.
    degraded: tuple[BackendState, ...]
    # Backend name -> the model id to send it, only where it differs (aliases).
    rewrites: dict[str, str] = field(default_factory=dict)
    names: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RoutingTable:
    version: int
    cluster_id: str
    created_unix_ms: int
    routes: dict[str, ModelRoute]
    # Every model id any registered backend reports, and every alias: a request for one of
    # these with no route is a 503, anything else a 404.
    known: frozenset[str]
    models_body: bytes
    model_bodies: dict[str, bytes]
    # Server type -> every routable backend of that type (native pass-through without a model).
    by_type: dict[int, ModelRoute] = field(default_factory=dict)


def _slots(backend: types_pb2.Backend) -> int:
    """The parallel slots a llama.cpp server reports (/props total_slots), else 0."""
    for model in backend.status.models:
        value = model.metadata.get("total_slots", "")
        if value.isascii() and value.isdigit() and len(value) < 10:
            return int(value)
    return 0


def _routable(backend: types_pb2.Backend) -> bool:
    return not backend.drained and backend.status.health in (HEALTHY, DEGRADED)


HeadersFor = Callable[[types_pb2.BackendSpec], "CIMultiDictProxy[str] | None"]


def build_table(
    snapshot: types_pb2.Snapshot,
    states: dict[str, BackendState],
    headers_for: HeadersFor | None = None,
    aging: ReportAging | None = None,
) -> RoutingTable:
    """Update states from the snapshot (creating new ones) and precompute every route.

    `headers_for` gives each backend's upstream headers (its credential); a backend it
    gives None for is not routable from this edge."""
    seen: set[str] = set()
    by_type: dict[int, list[tuple[BackendState, str]]] = {}
    # model id -> [(backend state, upstream model id)]
    serving: dict[str, list[tuple[BackendState, str]]] = {}
    known: set[str] = set()
    for backend in snapshot.backends:
        name = backend.spec.name
        if not name or name in seen:
            continue
        seen.add(name)
        state = states.get(name)
        if state is None:
            state = states[name] = BackendState(name)
        try:
            state.update(backend, aging)
            if headers_for is not None:
                state.headers = headers_for(backend.spec)
        except Exception:
            # One record the edge cannot read must not cost it every later snapshot (each
            # would fail the same way): that backend is left out, the rest routed.
            log.exception("backend %s left out of the routing table", name)
            continue
        ids = [m.id for m in backend.status.models if m.id]
        known.update(ids)
        if _routable(backend) and (headers_for is None or state.headers is not None):
            by_type.setdefault(state.backend_type, []).append((state, ""))
            for model_id in dict.fromkeys(ids):
                serving.setdefault(model_id, []).append((state, model_id))
    # Forget backends that left, unless requests to them are still in flight.
    for name in [n for n, s in states.items() if n not in seen]:
        states[name].alive = False
        if states[name].inflight == 0:
            del states[name]

    by_model = {k: list(v) for k, v in serving.items()}
    for alias in snapshot.aliases:
        if not alias.name:
            continue
        known.add(alias.name)
        entries = by_model.setdefault(alias.name, [])
        present = {s.name for s, _ in entries}
        for target in alias.targets:
            for state, model_id in serving.get(target, ()):
                if state.name not in present:
                    present.add(state.name)
                    entries.append((state, model_id))

    routes: dict[str, ModelRoute] = {}
    for model, entries in by_model.items():
        if entries:
            routes[model] = _route(model, entries)
    # A fallback chain's name is a model clients may ask for even with no backend of its own.
    chained = {c.model for c in snapshot.fallbacks if c.model and c.targets}
    known |= chained
    listed = sorted(routes.keys() | chained)
    objects = {m: _model_object(m, snapshot.created_unix_ms) for m in listed}
    return RoutingTable(
        version=snapshot.version,
        cluster_id=snapshot.cluster_id,
        created_unix_ms=snapshot.created_unix_ms,
        routes=routes,
        known=frozenset(known),
        models_body=orjson.dumps({"object": "list", "data": [objects[m] for m in listed]}),
        model_bodies={m: orjson.dumps(o) for m, o in objects.items()},
        by_type={t: _route("", entries) for t, entries in by_type.items()},
    )


def of_type(route: ModelRoute, backend_type: int) -> ModelRoute:
    """The route restricted to backends of one server type (native pass-through)."""
    tiers = tuple(
        t
        for t in (tuple(b for b in tier if b.backend_type == backend_type) for tier in route.tiers)
        if t
    )
    degraded = tuple(b for b in route.degraded if b.backend_type == backend_type)
    names = frozenset(b.name for tier in (*tiers, degraded) for b in tier)
    rewrites = {n: m for n, m in route.rewrites.items() if n in names}
    return ModelRoute(route.name, tiers, degraded, rewrites, names)


def _route(model: str, entries: Iterable[tuple[BackendState, str]]) -> ModelRoute:
    by_priority: dict[int, list[BackendState]] = {}
    degraded: list[BackendState] = []
    rewrites: dict[str, str] = {}
    names: set[str] = set()
    for state, model_id in entries:
        names.add(state.name)
        if model_id != model:
            rewrites[state.name] = model_id
        if state.health == HEALTHY:
            by_priority.setdefault(state.priority, []).append(state)
        else:
            degraded.append(state)
    tiers = tuple(tuple(by_priority[p]) for p in sorted(by_priority, reverse=True))
    degraded.sort(key=lambda s: -s.priority)
    return ModelRoute(model, tiers, tuple(degraded), rewrites, frozenset(names))


def _model_object(model_id: str, created_unix_ms: int) -> dict[str, object]:
    return {
        "id": model_id,
        "object": "model",
        "created": created_unix_ms // 1000,
        "owned_by": "corral",
    }
