"""The guardrails and the response cache around Proxy.run's attempt loop.

`Gateway.enter` runs once per request, after it was admitted and routed: the guard checks
(and maybe redacts) the body, then the cache answers it (a hit, replayed as a stream when a
stream was asked for), or lets it go upstream wrapped in a `Tap` that records the answer
the client receives (to store it once complete) and puts redacted originals back into it.
`Gateway.leave` runs when the request is over, whatever happened: a complete answer is
stored and handed to identical requests waiting for it; anything else is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from corral.config import EdgeConfig
from corral.v1 import content_pb2, gateway_pb2
from edge.client_request import ClientRequest
from edge.errors import ApiError
from edge.exchange import Exchange, Failure
from edge.gateway.cache.assemble import Assembler
from edge.gateway.cache.key import cache_key
from edge.gateway.cache.replay import anthropic_stream, openai_stream
from edge.gateway.cache.service import DIALECTS, Cache, directives
from edge.gateway.cache.store import Entry
from edge.gateway.call import CACHE_BYPASS, CACHE_HIT, CACHE_MISS, CALL, Call
from edge.gateway.guard.engine import Guard, Pending, Refused, Settings
from edge.gateway.guard.redact import Redaction, StreamRestorer
from edge.gateway.valkey import Valkey
from edge.table import BackendState, ModelRoute

CACHE_HEADER: Final = "X-Corral-Cache"
ROUTE_HEADER: Final = "X-Corral-Route"


class Tap(Exchange):
    """The request's own exchange, its answer recorded for the cache and restored for the
    client on the way out (either or both)."""

    __slots__ = (
        "assembler",
        "cache",
        "captured",
        "dialect",
        "inner",
        "key",
        "leader",
        "method",
        "redaction",
        "restorer",
        "ttl",
    )

    def __init__(self, inner: Exchange) -> None:
        super().__init__(inner.path, inner.raw, inner.body, inner.stream)
        self.inner = inner
        self.method = inner.method
        self.cache: Cache | None = None
        self.key = ""
        self.ttl = 0.0
        self.leader = False
        self.dialect = "openai"
        self.assembler: Assembler | None = None
        self.captured: bytes | None = None  # a whole answer to store
        self.redaction: Redaction | None = None
        self.restorer: StreamRestorer | None = None

    # -- delegated -------------------------------------------------------------------------

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        return self.inner.upstream(backend, rewrite)

    def streams(self, status: int, content_type: str) -> bool:
        return self.inner.streams(status, content_type)

    def give_up(self, model: str, failure: Failure | None) -> web.Response:
        return self.inner.give_up(model, failure)

    def error(self, status: int, data: bytes) -> bytes:
        return self.inner.error(status, data)

    def body_changed(self) -> None:
        self.inner.body_changed()
        self.raw = self.inner.raw

    # -- the answer on its way out ---------------------------------------------------------

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        response = self.inner.whole(status, data, headers, backend)
        if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        body = response.body
        if self.cache is not None and status == 200 and body[:1] == b"{":
            self.captured = body
        if self.redaction is not None:
            response.body = self.redaction.restore_json(body)
        return response

    def first(self, chunk: bytes, backend: BackendState) -> bytes:
        return self._out(self.inner.first(chunk, backend))

    def chunk(self, chunk: bytes) -> bytes:
        return self._out(self.inner.chunk(chunk))

    def end(self) -> bytes:
        tail = self._out(self.inner.end())
        if self.assembler is not None:
            self.captured = self.assembler.result(self.dialect)
        if self.restorer is not None:
            tail += self.restorer.flush()
        return tail

    def cut(self, exc: BaseException) -> bytes:
        self.assembler = None  # a cut answer is never stored
        out = self.inner.cut(exc)
        if self.restorer is not None:
            out = self.restorer.flush() + out
        return out

    def _out(self, data: bytes) -> bytes:
        if self.assembler is not None:
            self.assembler.feed(data)
        if self.restorer is not None and data:
            return self.restorer.feed(data)
        return data


TAP: Final = web.RequestKey("corral_gateway_tap", Tap)


class ContentSettings:
    """Cache and PII settings per key and team, from the control plane's policy."""

    def __init__(self, default_restore: bool) -> None:
        self.default_restore = default_restore
        self.keys: dict[str, content_pb2.ContentPolicy] = {}
        self.teams: dict[str, content_pb2.ContentPolicy] = {}

    def apply(self, policy: gateway_pb2.Policy) -> None:
        self.keys = {k.id: k.content for k in policy.keys if k.HasField("content")}
        self.teams = {t.name: t.content for t in policy.teams if t.HasField("content")}

    def _records(self, team: str, key: str) -> list[content_pb2.ContentPolicy]:
        found = [self.keys.get(key) if key else None, self.teams.get(team)]
        return [c for c in found if c is not None]

    def pii(self, team: str, key: str) -> Settings | None:
        """The key's PII action, else its team's (None: neither sets one)."""
        if not self.keys and not self.teams:
            return None
        records = self._records(team, key)
        action = next((c.pii for c in records if c.HasField("pii")), None)
        if action is None:
            return None
        restore = next(
            (c.pii_restore for c in records if c.HasField("pii_restore")), self.default_restore
        )
        return Settings(action, restore)

    def ttl(self, team: str, key: str) -> float | None:
        """The key's cache TTL, else its team's (None: neither sets one)."""
        if not self.keys and not self.teams:
            return None
        for c in self._records(team, key):
            if c.HasField("cache_ttl_seconds"):
                return c.cache_ttl_seconds
        return None

    @property
    def has_pii(self) -> bool:
        return any(c.HasField("pii") for c in (*self.keys.values(), *self.teams.values()))

    @property
    def has_ttl(self) -> bool:
        return any(
            c.HasField("cache_ttl_seconds") for c in (*self.keys.values(), *self.teams.values())
        )


class Gateway:
    """The edge's guard and cache; each in use when its config or the policy asks for it."""

    def __init__(self, guard: Guard, cache: Cache, content: ContentSettings) -> None:
        self._guard = guard
        self._cache = cache
        self.content = content
        self.guard: Guard | None = None
        self.cache: Cache | None = None
        self.refresh()

    def refresh(self) -> None:
        """After the config or the policy changed: which of the two are in use."""
        content = self.content
        self.guard = self._guard if self._guard.active or content.has_pii else None
        self.cache = self._cache if self._cache.active or content.has_ttl else None

    @property
    def active(self) -> bool:
        return self.guard is not None or self.cache is not None

    async def enter(
        self,
        request: ClientRequest,
        call: Call,
        exchange: Exchange,
        lookup: Callable[[], ModelRoute],
        endpoint: str,
    ) -> Exchange | web.StreamResponse:
        """The exchange to run (maybe wrapped), or the answer from the cache."""
        redaction: Redaction | None = None
        guard = self.guard
        if guard is not None:
            try:
                team, key_id, model = call.team, call.key_id, call.model
                outcome = guard.inspect_now(exchange.body, team=team, key=key_id, model=model)
                if isinstance(outcome, Pending):  # hooks to ask, or a body for a thread
                    outcome = await guard.finish(
                        outcome, team=team, key=key_id, model=model, endpoint=endpoint
                    )
            except Refused as exc:
                call.guard = exc.findings
                raise
            if outcome is not None:
                call.guard = dict(outcome.findings)
                if outcome.hook_failed:
                    call.guard["hook_failed"] = 1
                if outcome.changed:
                    exchange.body_changed()
                redaction = outcome.redaction
        cache = self.cache
        dialect = DIALECTS.get(endpoint)
        if cache is None or dialect is None:
            return _wrapped(request, exchange, redaction)
        ttl = cache.ttl(call.team, call.key_id, call.model)
        if ttl <= 0:
            return _wrapped(request, exchange, redaction)
        asked = directives(request.headers.get("Cache-Control"))
        key = cache_key(call.team, endpoint, call.model, _targets(lookup), exchange.body)
        metrics = cache.metrics
        hot = metrics.hot
        leader = False
        if asked.read:
            while True:
                if cache.shared is None:  # no wait for the in-process tier alone
                    entry = cache.get_memory(key, asked.max_age)
                    found = None if entry is None else (entry, "memory")
                else:
                    found = await cache.get(key, asked.max_age)
                if found is not None:
                    entry, tier = found
                    cache.put(key, entry, ttl, tier)  # a shared hit kept in process too
                    if tier == "memory":
                        hot.hit_memory += 1
                    else:
                        hot.hit_shared += 1
                    return self._hit(call, exchange, entry, dialect, redaction)
                if not asked.store:
                    break
                waiting = cache.lead(key)
                if waiting is None:
                    leader = True
                    break
                metrics.coalesced.inc()
                try:
                    async with asyncio.timeout(cache.wait):
                        awaited = await asyncio.shield(waiting)
                except TimeoutError:
                    break
                if awaited is not None:
                    hot.hit_memory += 1
                    return self._hit(call, exchange, awaited, dialect, redaction)
                # The request upstream failed: look again (or go up ourselves).
            call.cache = CACHE_MISS
            hot.miss += 1
        else:
            call.cache = CACHE_BYPASS
            hot.bypass += 1
        tap = _wrapped(request, exchange, redaction, force=True)
        assert isinstance(tap, Tap)
        if asked.store:
            tap.cache = cache
            tap.key = key
            tap.ttl = ttl
            tap.leader = leader
            tap.dialect = dialect
            if exchange.stream:
                tap.assembler = Assembler(cache.max_entry)
        return tap

    def leave(self, request: ClientRequest, call: Call) -> None:
        """The request is over: store its complete answer, release identical requests."""
        tap = request.get(TAP)
        if tap is None or tap.cache is None:
            return
        cache = tap.cache
        entry = None
        data = tap.captured
        if data is not None and 200 <= call.status < 300:
            if tap.dialect == "openai" and tap.assembler is not None:
                data = _with_usage(data, call)
            entry = Entry(data, time.time(), call.prompt_tokens, call.completion_tokens)
            cache.put(tap.key, entry, tap.ttl)
        if tap.leader:
            cache.finish(tap.key, entry)

    def _hit(
        self,
        call: Call,
        exchange: Exchange,
        entry: Entry,
        dialect: str,
        redaction: Redaction | None,
    ) -> web.StreamResponse:
        call.cache = CACHE_HIT
        call.route = "cache"
        call.served = ""
        call.prompt_tokens = call.completion_tokens = call.cached_tokens = 0
        call.estimated = False
        saved = entry.prompt_tokens + entry.completion_tokens
        call.saved_tokens = saved
        if self.cache is not None:
            self.cache.metrics.saved_tokens.inc(saved)
        headers = {
            CACHE_HEADER: CACHE_HIT,
            ROUTE_HEADER: "cache",
            "Age": str(int(entry.age(time.time()))),
        }
        body = entry.body
        if exchange.stream:
            answer: Any = orjson.loads(body)
            if dialect == "anthropic":
                data = anthropic_stream(answer)
            else:
                options = exchange.body.get("stream_options")
                include = isinstance(options, dict) and options.get("include_usage") is True
                data = openai_stream(answer, include and not call.usage_hidden)
            if redaction is not None:
                restorer = StreamRestorer(redaction)
                data = restorer.feed(data) + restorer.flush()
            headers["Content-Type"] = "text/event-stream"
            headers["Cache-Control"] = "no-cache"
            call.ttft = time.monotonic() - call.started
            return web.Response(body=data, headers=headers)
        if redaction is not None:
            body = redaction.restore_json(body)
        headers["Content-Type"] = "application/json"
        return web.Response(body=body, headers=headers)


def _targets(lookup: Callable[[], ModelRoute]) -> list[str]:
    """The models an alias stands for (none for a plain model, or with no route now)."""
    try:
        return list(lookup().rewrites.values())
    except ApiError:
        return []


def _wrapped(
    request: ClientRequest, exchange: Exchange, redaction: Redaction | None, force: bool = False
) -> Exchange:
    if redaction is None and not force:
        return exchange
    tap = Tap(exchange)
    if redaction is not None:
        tap.redaction = redaction
        if exchange.stream:
            tap.restorer = StreamRestorer(redaction)
    request[TAP] = tap
    return tap


def _with_usage(data: bytes, call: Call) -> bytes:
    """An assembled OpenAI answer gets the usage the backend reported, when the client's
    stream hid it (a later non-streamed hit then carries usage like any answer)."""
    if call.estimated or b'"usage"' in data:
        return data
    answer = orjson.loads(data)
    if answer.get("object") == "chat.completion" or answer.get("object") == "text_completion":
        answer["usage"] = {
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "total_tokens": call.prompt_tokens + call.completion_tokens,
        }
    return orjson.dumps(answer)


async def add_cache_header(request: ClientRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: X-Corral-Cache on misses and bypasses too (streams included)."""
    call = request.get(CALL)
    if call is not None and call.cache and CACHE_HEADER not in response.headers:
        response.headers[CACHE_HEADER] = call.cache


GATEWAY: Final = web.AppKey("gateway", Gateway)


@contextlib.asynccontextmanager
async def running(
    config: EdgeConfig,
    registry: CollectorRegistry | None,
    session: Callable[[], aiohttp.ClientSession],
) -> AsyncIterator[Gateway]:
    """The edge's gateway for its lifetime; the shared cache tier's client closed at the end."""
    content = ContentSettings(config.guard.restore)
    guard = Guard(config.guard, registry=registry, session=session, policy=content.pii)
    cache_config = config.cache
    valkey = (
        Valkey(cache_config.valkey_url, timeout=cache_config.valkey_timeout_seconds)
        if cache_config.valkey_url
        else None
    )
    cache = Cache(cache_config, shared=valkey, registry=registry, policy=content.ttl)
    try:
        yield Gateway(guard, cache, content)
    finally:
        await cache.close()
        if valkey is not None:
            await valkey.close()


def apply_policy(app: web.Application, policy: gateway_pb2.Policy) -> None:
    """The policy's cache and PII settings on this edge at once (edge/gateway/policy.py)."""
    from edge.app import PROXY

    gateway = app.get(GATEWAY)
    if gateway is not None:
        gateway.content.apply(policy)
        gateway.refresh()
        app[PROXY].gateway = gateway if gateway.active else None
