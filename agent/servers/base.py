"""What every server probe shares: the probe cycle, the health judge, server facts, and the
Anthropic Messages check; helpers the per-type modules use to read answers."""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from agent import promtext
from agent.http import BackendClient, ParseError, ProbeResponse
from agent.limits import MAX_QUEUE
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
NOT_ENABLED = (404, 501)


@dataclass
class Observation:
    """One probe cycle's findings, before hysteresis."""

    health: HealthState
    reason: str
    # None when not learnt this cycle (the caller keeps what it knew).
    models: list[types_pb2.ModelInfo] | None = None
    load: types_pb2.BackendLoad | None = None


@dataclass
class Judge:
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

    server_type: ClassVar[str]  # the name `--type` takes (ollama, vllm, ...)
    backend_type: ClassVar[types_pb2.BackendType.ValueType]
    static_capabilities: ClassVar[tuple[Capability, ...]] = ()
    # Where the server's OpenAI API lives below its root ("" for /v1/... at the root).
    base_path: ClassVar[str] = ""

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
            judge = Judge(self.slow_seconds)
            _, info_ok = await asyncio.gather(self.cycle(judge), self._refresh_info())
            if info_ok:
                self._info_at = now
        else:
            judge = Judge(self.slow_seconds)
            await self.cycle(judge)
        health, reason = judge.verdict()
        if health in (UNHEALTHY, LOADING):
            # Ask again once it is back: it may have been upgraded or restarted differently.
            self._info_at = None
        return Observation(health, reason, list(self.models), _copy(self.load))

    @abc.abstractmethod
    async def cycle(self, judge: Judge) -> None:
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
        """True/False when the server told us, None when it could not (down, 5xx) or was
        not asked (asked again on the next cycle)."""
        if not await self.messages_probe_allowed():
            return None
        resp = await self.client.post_json(
            self.base_path + "/v1/messages", {}, expected=range(400, 600)
        )
        return self.speaks_messages(resp)

    async def messages_probe_allowed(self) -> bool:
        """False while POST /v1/messages would disturb the server (wake it from sleep)."""
        return True

    def speaks_messages(self, resp: ProbeResponse) -> bool | None:
        """Read the answer to POST /v1/messages with `{}`: True/False, or None (it did not tell)."""
        if resp.status in (400, 422) or (resp.status is not None and 200 <= resp.status < 300):
            # Servers that answer unknown routes with 200 and an error body (older LM Studio).
            return b"unexpected endpoint" not in resp.body.lower()
        if resp.status in (401, 403, 404, 405):
            return False
        # No answer, busy (429) or failing (5xx): it did not tell; ask again later.
        return None

    # Helpers for subclasses.

    def metrics_load(
        self, judge: Judge, resp: ProbeResponse, running: str, waiting: str, *kv_cache: str
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
        return make_load(
            promtext.total(samples, running),
            promtext.total(samples, waiting),
            promtext.highest(samples, *kv_cache) if kv_cache else None,
        )

    def health(self, judge: Judge, resp: ProbeResponse) -> bool:
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

    def json_of(self, judge: Judge, resp: ProbeResponse) -> Any:
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

    def parsed(self, judge: Judge, resp: ProbeResponse, parse: Any, *args: Any) -> Any:
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
        if resp.status in NOT_ENABLED:
            if resp.path not in self._unsupported:
                log.info("%s: %s is not served here; skipping it", self.client.base_url, resp.path)
            self._unsupported[resp.path] = time.monotonic()
            return False
        self._unsupported.pop(resp.path, None)
        return True

    async def optional_get(self, path: str) -> ProbeResponse | None:
        if not self.enabled(path):
            return None
        return await self.client.get(path, expected=NOT_ENABLED)


def _copy(load: types_pb2.BackendLoad) -> types_pb2.BackendLoad:
    out = types_pb2.BackendLoad()
    out.CopyFrom(load)
    return out


def make_load(
    running: float | None, waiting: float | None, kv: float | None
) -> types_pb2.BackendLoad:
    """A load the control plane accepts, whatever a server's metrics said: NaN or infinite
    readings count as absent, counts are kept within 0..MAX_QUEUE, the KV share within 0..1."""
    load = types_pb2.BackendLoad(running=_count(running), waiting=_count(waiting))
    if kv is not None and math.isfinite(kv):
        load.kv_cache_usage = min(max(kv, 0.0), 1.0)
    return load


def _count(value: float | None) -> int:
    if value is None or not math.isfinite(value):
        return 0
    return min(max(int(value), 0), MAX_QUEUE)


def uint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return 0
    return int(value)


def str_metadata(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v not in (None, "", [], {})}


def data_list(data: Any, key: str = "data", *, null_is_empty: bool = False) -> list[dict[str, Any]]:
    """The objects in data[key]; `null_is_empty`: a JSON null there means no items (servers
    written in Go encode an empty slice that way)."""
    if null_is_empty and isinstance(data, dict) and key in data and data[key] is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ParseError(f"expected an object with a {key!r} list")
    return [item for item in data[key] if isinstance(item, dict)]


def parse_openai_models(data: Any) -> list[types_pb2.ModelInfo]:
    """GET /v1/models: {"object":"list","data":[{"id":..., "max_model_len"?: N, ...}]}."""
    out = []
    for item in data_list(data):
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
                context_length=uint(context),
                metadata=str_metadata(
                    owned_by=item.get("owned_by"), root=item.get("root"), parent=item.get("parent")
                ),
            )
        )
    return out
