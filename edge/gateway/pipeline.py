"""The guardrails and the response cache around Proxy.run's attempt loop.

`Gateway.enter` runs once per request, after it was admitted and routed (a plain call, a
coroutine only when something must be waited for): the guard checks (and maybe redacts) the
body, then the cache answers it (a hit, replayed as a stream when a stream was asked for), or
lets it go upstream: as it is when its answer comes whole and nothing is to be restored,
else wrapped in a `Tap` (edge/gateway/tap.py) that records the answer the client receives (a
stream put together to store it once complete) and puts redacted originals back into it.
`Gateway.leave` runs when the request is over, whatever happened: a complete answer is
stored and handed to identical requests waiting for it; anything else is not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from multidict import istr

from corral.v1 import gateway_pb2
from edge.client_request import ClientRequest
from edge.errors import ApiError
from edge.exchange import Exchange
from edge.gateway.cache.key import cache_key, variant
from edge.gateway.cache.replay import anthropic_stream, openai_stream
from edge.gateway.cache.service import (
    ASKED_NOTHING,
    DIALECTS,
    Cache,
    Lookup,
    directives,
)
from edge.gateway.cache.store import Entry
from edge.gateway.call import CACHE_BYPASS, CACHE_HIT, CACHE_MISS, CALL, Call
from edge.gateway.content import ContentSettings
from edge.gateway.guard.engine import Guard, Outcome, Pending, Refused
from edge.gateway.guard.redact import Redaction, StreamRestorer
from edge.gateway.tap import Tap, wrap
from edge.providers.fallbacks import FALLBACK
from edge.response_hook import response_hook
from edge.table import ModelRoute

# istr: multidict looks them up without folding their case each time.
CACHE_HEADER: Final = istr("X-Corral-Cache")
ROUTE_HEADER: Final = istr("X-Corral-Route")


# What Gateway.enter gives: the exchange to run, the cache's answer, or a coroutine to await
# for either (only when something must be waited for).
Entered = Exchange | web.StreamResponse | Coroutine[Any, Any, Exchange | web.StreamResponse]


def _guarded(call: Call, exchange: Exchange, outcome: Outcome | None) -> Redaction | None:
    """The guard's findings on the Call, its changes on the exchange; the redaction to undo
    on the way out."""
    if outcome is None:
        return None
    call.guard = dict(outcome.findings)
    if outcome.hook_failed:
        call.guard["hook_failed"] = 1
    if outcome.changed:
        exchange.body_changed()
    return outcome.redaction


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
        has_pii, has_ttl = content.has_pii, content.has_ttl
        self._guard.consult_policy(has_pii)
        self._cache.consult_policy(has_ttl)
        self.guard = self._guard if self._guard.active or has_pii else None
        self.cache = self._cache if self._cache.active or has_ttl else None

    @property
    def active(self) -> bool:
        return self.guard is not None or self.cache is not None

    def enter(
        self,
        request: ClientRequest,
        call: Call,
        exchange: Exchange,
        lookup: Callable[[], ModelRoute],
        endpoint: str,
    ) -> Entered:
        """The exchange to run (maybe wrapped), or the answer from the cache. A plain call
        unless something must be waited for (guard hooks or a body for a thread, the shared
        cache tier, an identical request already upstream): then the coroutine to await
        for the same."""
        redaction: Redaction | None = None
        guard = self.guard
        if guard is not None:
            raw = exchange.raw
            clean_pass = guard.clean_pass
            if clean_pass is not None and raw is not None:
                if clean_pass.clean(raw):  # inspect_now's answer for it: nothing to check
                    return self._look_up(request, call, exchange, lookup, endpoint, None)
                raw = None  # not clean: its strings are scanned, the raw body not again
            try:
                # Positional: Python 3.11 does not specialise a call with keywords.
                outcome = guard.inspect_now(exchange.body, call.team, call.key_id, call.model, raw)
            except Refused as exc:
                call.guard = exc.findings
                raise
            if outcome is not None:  # None (nothing found) the usual case: no more tests
                if isinstance(outcome, Pending):  # hooks to ask, or a body for a thread
                    # Arguments, not a closure: a closure would make enter's variables cells,
                    # allocated on every call.
                    return self._guard_later(
                        guard, outcome, request, call, exchange, lookup, endpoint
                    )
                redaction = _guarded(call, exchange, outcome)
        return self._look_up(request, call, exchange, lookup, endpoint, redaction)

    async def _guard_later(
        self,
        guard: Guard,
        pending: Pending,
        request: ClientRequest,
        call: Call,
        exchange: Exchange,
        lookup: Callable[[], ModelRoute],
        endpoint: str,
    ) -> Exchange | web.StreamResponse:
        """The guard's hooks (or its thread) awaited, then the cache looked up."""
        try:
            team, key_id, model = call.team, call.key_id, call.model
            outcome = await guard.finish(
                pending, team=team, key=key_id, model=model, endpoint=endpoint
            )
        except Refused as exc:
            call.guard = exc.findings
            raise
        redaction = _guarded(call, exchange, outcome)
        entered = self._look_up(request, call, exchange, lookup, endpoint, redaction)
        if isinstance(entered, (Exchange, web.StreamResponse)):
            return entered
        return await entered

    def _look_up(
        self,
        request: ClientRequest,
        call: Call,
        exchange: Exchange,
        lookup: Callable[[], ModelRoute],
        endpoint: str,
        redaction: Redaction | None,
    ) -> Entered:
        """The cache's answer, or the exchange to run (a Tap to store its answer); with the
        in-process tier alone and no identical request upstream, without an await."""
        cache = self.cache
        dialect = DIALECTS.get(endpoint)
        if cache is None or dialect is None:
            return wrap(call, exchange, redaction)
        ttl = cache.fixed_ttl
        if ttl is None:
            ttl = cache.ttl(call.team, call.key_id, call.model)
        if ttl <= 0:
            return wrap(call, exchange, redaction)
        headers = request.headers
        # Repeated lines are one list (RFC 9110): `max-age=60` on one, `no-store` on another.
        lines = headers.getall(hdrs.CACHE_CONTROL, ())
        asked = directives(", ".join(lines)) if lines else ASKED_NOTHING
        # No older than this request's own TTL, whoever stored the answer and for how long.
        max_age = asked.max_age
        if max_age is None or max_age > ttl:
            max_age = ttl
        try:  # the models an alias stands for (none for a plain model, or with no route now)
            rewrites = lookup().rewrites
        except ApiError:
            rewrites = None
        targets = rewrites.values() if rewrites else ()
        key = cache_key(call.team, endpoint, call.model, targets, exchange.body, variant(headers))
        looked = Lookup(cache, key, ttl, dialect, max_age, asked.store, redaction)
        if not asked.read:
            call.cache = CACHE_BYPASS
            cache.metrics.hot.bypass += 1
            return _storing(call, exchange, looked)
        if cache.shared is None:  # no wait for the in-process tier alone
            memory = cache.memory
            if memory.holds(key):
                entry = memory.get(key, max_age)
                if entry is not None:
                    return self._found(call, exchange, looked, entry, "memory")
            # Upstream now unless an identical request is there (it leads when it stores):
            # Cache.lead's first case and _miss, written out (most requests are misses).
            inflight = cache.inflight
            if not asked.store or key not in inflight:
                call.cache = CACHE_MISS
                cache.metrics.hot.miss += 1
                if not asked.store:
                    return wrap(call, exchange, redaction)
                inflight[key] = None
                looked.leader = True
                call.storing = looked
                if redaction is None and not exchange.stream:
                    return exchange
                tap = call.tap = Tap(exchange, redaction, looked)
                return tap
        # The shared tier to ask, or an identical request upstream to wait for.
        return self._look_up_later(request, call, exchange, looked)

    async def _look_up_later(
        self, request: ClientRequest, call: Call, exchange: Exchange, looked: Lookup
    ) -> Exchange | web.StreamResponse:
        """The lookup that waits: the shared tier, or an identical request upstream."""
        cache = looked.cache
        key = looked.key
        while True:
            found = await cache.get(key, looked.max_age)
            if found is not None:
                return self._found(call, exchange, looked, *found)
            if not looked.store:
                return _miss(call, exchange, looked, False)
            waiting = cache.lead(key)
            if waiting is None:
                return _miss(call, exchange, looked, True)
            cache.metrics.coalesced.inc()
            try:
                async with asyncio.timeout(cache.wait):
                    awaited = await asyncio.shield(waiting)
            except TimeoutError:
                return _miss(call, exchange, looked, False)
            if awaited is not None:
                cache.metrics.hot.hit_memory += 1
                return self._hit(call, exchange, awaited, looked.dialect, looked.redaction)
            # The request upstream failed: look again (or go up ourselves).

    def _found(
        self, call: Call, exchange: Exchange, looked: Lookup, entry: Entry, tier: str
    ) -> web.StreamResponse:
        cache = looked.cache
        if tier == "memory":
            cache.metrics.hot.hit_memory += 1
        else:  # a shared hit kept in process too (not written back, not counted as stored)
            cache.put(looked.key, entry, looked.ttl, tier)
            cache.metrics.hot.hit_shared += 1
        return self._hit(call, exchange, entry, looked.dialect, looked.redaction)

    def leave(self, call: Call, outcome: object) -> None:
        """The request is over: store its complete answer, release identical requests.
        `outcome`: what its attempts came to (the answer; a Failure or None when none did)."""
        tap = call.tap
        if tap is not None:  # the Call may wait for the usage writer: not its exchange
            call.tap = None
        looked = call.storing
        if looked is None:
            return
        call.storing = None
        if tap is None:  # a whole answer, as the client gets it
            data = outcome.body if isinstance(outcome, web.Response) else None
            if not (call.status == 200 and isinstance(data, bytes) and data[:1] == b"{"):
                data = None
        else:
            data = tap.captured
            if data is not None and tap.assembler is not None and looked.dialect == "openai":
                data = _with_usage(data, call)
        cache = looked.cache
        # A fallback's answer is another model's: never stored as the model asked for.
        if data is None or not 200 <= call.status < 300 or call.route == FALLBACK:
            if looked.leader:
                cache.finish(looked.key, None)
            return
        cache.settle(
            looked.key, looked.ttl, looked.leader, data, call.prompt_tokens, call.completion_tokens
        )

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
            self.cache.metrics.hot.saved_tokens += saved
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


def _miss(call: Call, exchange: Exchange, looked: Lookup, leader: bool) -> Exchange:
    call.cache = CACHE_MISS
    looked.cache.metrics.hot.miss += 1
    looked.leader = leader
    return _storing(call, exchange, looked)


def _storing(call: Call, exchange: Exchange, looked: Lookup) -> Exchange:
    """The exchange to run for an answer the cache stores (when the client allows it): as it
    is for a whole answer with nothing to restore (Gateway.leave takes it from the response),
    else in a Tap."""
    redaction = looked.redaction
    if not looked.store:
        return wrap(call, exchange, redaction)
    call.storing = looked
    if redaction is None and not exchange.stream:
        return exchange
    tap = call.tap = Tap(exchange, redaction, looked)
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


def put_cache_header(request: ClientRequest, response: web.StreamResponse) -> None:
    """X-Corral-Cache on misses and bypasses too (streams included)."""
    call = request.get(CALL)
    if call is not None and call.cache:
        headers = response.headers
        if CACHE_HEADER not in headers:
            headers[CACHE_HEADER] = call.cache


add_cache_header: Final = response_hook(put_cache_header)  # on_response_prepare

GATEWAY: Final = web.AppKey("gateway", Gateway)


def apply_policy(app: web.Application, policy: gateway_pb2.Policy) -> None:
    """The policy's cache and PII settings on this edge at once (edge/gateway/policy.py)."""
    from edge.app import PROXY

    gateway = app.get(GATEWAY)
    if gateway is not None:
        gateway.content.apply(policy)
        gateway.refresh()
        app[PROXY].gateway = gateway if gateway.active else None
