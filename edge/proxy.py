"""The hot path: one OpenAI request in, one backend attempt (or a few) out, bytes relayed.

Per request: read and parse the body once, admit it (keys, limits, the gateway), pick a
backend from precomputed candidate lists, and try it; on a retryable failure pick another.
One try on one backend — sending the original bytes and relaying the answer, whole or as a
stream — is edge/attempt.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from corral.config import EdgeConfig
from edge.accounting import Accounting
from edge.attempt import Attempt, Attempts
from edge.balancer import RETRY, Balancer, Full, too_busy
from edge.client_request import ClientRequest
from edge.errors import ApiError
from edge.exchange import (
    Admission,
    Exchange,
    Failure,
    ModelRenamer,
    OpenAIExchange,
    no_sticky_key,
    stream_error,
)
from edge.forward import Forwarding
from edge.gateway import call as calls
from edge.gateway.call import CALL, Call
from edge.gateway.identity import Identity, KeyRefused, KeyTable
from edge.gateway.pipeline import Gateway
from edge.gateway.tokens import ask_usage
from edge.h1pool import Pool
from edge.inbound import CHAT, EMBEDDINGS, NATIVE_PREFIXES, Endpoint, parse
from edge.lane.request import LaneRequest
from edge.metrics import EdgeMetrics
from edge.providers.fallbacks import (
    FALLBACK,
    Fallbacks,
    Stage,
    resting,
    run_chain,
)
from edge.providers.hosted import Pools, adapt
from edge.recorder import DISCARD, Recorder
from edge.relay import (
    BACKEND_HEADER,
    ROUTE_HEADER,
    ClientGone,
)
from edge.routing import chat_key, completion_key, session_header_key
from edge.table import ModelRoute

if TYPE_CHECKING:
    from edge.gateway.limits.gate import Gate
    from edge.tracing import Tracer

# Re-exported: the routes and tests that import them from here.
__all__ = [
    "BACKEND_HEADER",
    "ROUTE_HEADER",
    "Admission",
    "Attempt",
    "ClientGone",
    "Exchange",
    "Failure",
    "ModelRenamer",
    "OpenAIExchange",
    "Proxy",
    "Recorder",
    "stream_error",
    "too_large",
]

log = logging.getLogger(__name__)


class Proxy:
    """Serves every proxied request (OpenAI, Messages, native) against the balancer's table."""

    def __init__(
        self,
        config: EdgeConfig,
        balancer: Balancer,
        metrics: EdgeMetrics,
        session: aiohttp.ClientSession,
    ) -> None:
        self.config = config
        self.balancer = balancer
        self.metrics = metrics
        self.session = session
        self.keys = KeyTable(config)
        self._max_body = config.max_body_bytes
        self._client_timeout = config.client_timeout_seconds
        self._attempts = max(1, config.max_attempts)
        self._session_headers = config.session_headers
        self.pools = Pools(config)  # one connection pool per hosted provider
        # The lean HTTP/1.1 client for plain-http backends (edge/h1pool.py), if chosen (the
        # configuration's loader refuses any value but fast and aiohttp, corral.config.CHOICES).
        self.fast: Pool | None = None
        if config.upstream_client == "fast":
            try:
                self.fast = Pool(connect_timeout=config.connect_timeout_seconds)
            except ImportError:  # an install from before httptools was a dependency
                log.warning("httptools is not installed: upstream_client aiohttp instead of fast")
        # One try on one backend (edge/attempt.py).
        self._try = Attempts(
            balancer,
            metrics,
            session,
            self.pools,
            self.fast,
            Forwarding(config.headers),
            first_byte=config.first_byte_timeout_seconds,
            idle=config.idle_timeout_seconds,
            client=config.client_timeout_seconds,
        )
        self.fallbacks = Fallbacks(config, balancer)  # chains from the snapshot in force
        # Where finished Calls go (edge/gateway/usage.py); replaced by the app's recorder.
        self.recorder: Recorder = DISCARD
        # Rate limits and budgets (edge/gateway/limits/gate.py); None: nothing is limited.
        self.limits: Gate | None = None
        # Guardrails and the response cache (edge/gateway/pipeline.py), when configured.
        self.gateway: Gateway | None = None
        # OpenTelemetry spans (edge/tracing.py); None unless an OTLP endpoint is configured.
        self.tracer: Tracer | None = None
        # Requests over, counted and recorded once the loop turn that answered them is done.
        self.accounting = Accounting(self, metrics)

    # -- admission -------------------------------------------------------------------------

    def check_auth(self, request: ClientRequest, call: Call | None = None) -> Identity | None:
        """The client's identity (None: keys not enforced), also put on the request's Call
        (`call`, when the caller holds it: no lookup on the request); 401 when its key is
        refused."""
        try:
            identity = self.keys.check(request.headers)
        except KeyRefused as exc:  # a known key: its refusals are recorded under it
            calls.tag_identity(request, exc.identity)
            raise
        if identity is not None:
            if call is None:
                calls.tag_identity(request, identity)
            else:
                call.identify(identity)
        return identity

    async def read_body(self, request: ClientRequest) -> bytes:
        length = request.content_length
        if length is not None and length > self._max_body:
            raise too_large(self._max_body)
        try:
            if request.content.is_eof():  # the whole body came with the headers: no timer
                return await request.read()
            async with asyncio.timeout(self._client_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(self._max_body) from None
        except TimeoutError:
            # A client trickling its body (slowloris) must not hold a handler forever.
            raise ApiError(
                408,
                f"The request body did not arrive within {self._client_timeout:g}s.",
                code="request_timeout",
                headers={"Connection": "close"},
            ) from None

    # -- the request -----------------------------------------------------------------------

    def handle(self, request: ClientRequest, endpoint: Endpoint) -> Awaitable[web.StreamResponse]:
        """An OpenAI request: parsed, routed by its model, relayed as the backend answers
        (run's coroutine, returned to be awaited: no frame of its own on every resume)."""

        async def admit() -> Admission:
            call = request[CALL]
            identity = self.check_auth(request, call)
            if isinstance(request, LaneRequest):  # came whole, within max_body_bytes
                raw = request.body
            else:
                raw = await self.read_body(request)
            body = parse(raw, endpoint)
            model: str = body["model"]
            if identity is not None:
                identity.check_model(model)
            stream = endpoint.streams and body.get("stream") is True
            if stream and endpoint is not EMBEDDINGS:
                asked = ask_usage(raw, body)  # tokens for the usage record
                if asked is not None:
                    raw = asked
                    call.usage_hidden = True
            exchange = OpenAIExchange(endpoint.path, raw, body, stream)
            sticky = (
                (lambda: self._sticky_key(request, endpoint, model, body))
                if endpoint.sticky
                else no_sticky_key
            )
            return Admission(exchange, lambda: self.balancer.route_for(model), sticky)

        return self.run(request, endpoint.name, admit)

    def _sticky_key(
        self, request: ClientRequest, endpoint: Endpoint, model: str, body: dict[str, Any]
    ) -> bytes | None:
        """The key that keeps a conversation on one backend: a session header's, else the
        conversation's head (edge/routing.py)."""
        key = session_header_key(request.headers, self._session_headers)
        if key is not None:
            return key
        if endpoint is CHAT:
            return chat_key(model, body["messages"])
        return completion_key(model, body["prompt"])

    async def run(
        self,
        request: ClientRequest,
        endpoint_name: str,
        admit: Callable[[], Awaitable[Admission]],
    ) -> web.StreamResponse:
        """The attempt loop every endpoint shares: admit (auth, body, route), then pick a
        backend, try it, and on a retryable failure pick another, up to max_attempts."""
        call = calls.begin(request, endpoint_name)
        tracer = self.tracer
        if tracer is not None:
            tracer.begin(request)
        started = call.started
        model_label = "-"  # a model name only once it routes: unknown names are unbounded
        status = 0
        outcome: web.StreamResponse | Failure | None = None  # what the attempts came to
        try:
            admission = await admit()
            exchange = admission.exchange
            asked = exchange.body.get("model")
            call.model = asked if isinstance(asked, str) else ""
            call.stream = exchange.stream
            limits = self.limits
            if limits is not None:
                waiting = limits.admit(request, call, exchange.body, len(exchange.raw or b""))
                if waiting is not None:  # a lease is short: the store is asked
                    await waiting
            gateway = self.gateway
            if gateway is not None:  # guardrails and the response cache
                entered = gateway.enter(request, call, exchange, admission.route, endpoint_name)
                # Exchange first: StreamResponse is an ABC (MutableMapping), slow to refuse.
                if not isinstance(entered, (Exchange, web.StreamResponse)):
                    entered = await entered  # guard hooks, the shared tier, a leader's answer
                if not isinstance(entered, Exchange):  # a cache hit
                    model_label, status = call.model, entered.status
                    return entered
                exchange = entered
            if call.team in self.recorder.body_teams:
                call.prompt = exchange.raw or b""
            lookup = admission.route
            key = admission.sticky()
            stages = self.fallbacks.stages(call.model, lookup)
            failure: Failure | None = None
            if stages is None:
                route = lookup()
                model_label = route.name or endpoint_name
                outcome = await self._stage(request, exchange, lookup, route, key, call, None)
                if not isinstance(outcome, Failure) and outcome is not None:
                    status = outcome.status
                    return outcome
                failure = outcome
                given_up = route.name or endpoint_name
            else:
                model_label = given_up = call.model  # a configured chain: a bounded label
                outcome = await run_chain(
                    stages,
                    exchange,
                    lambda stage, route: self._stage(
                        request, exchange, stage.lookup, route, key, call, stage
                    ),
                )
                if not isinstance(outcome, Failure) and outcome is not None:
                    status = outcome.status
                    return outcome
                failure = outcome
            if failure is not None and failure.reason == "full":
                raise too_busy(given_up)
            response = exchange.give_up(given_up, failure)
            if endpoint_name in NATIVE_PREFIXES:
                call.stream = False  # whatever its body asked, no answer streamed
            status = response.status
            if failure is not None:
                call.error = failure.reason
            return response
        except ApiError as exc:
            status = exc.status
            call.error = exc.code or exc.error_type
            if endpoint_name in NATIVE_PREFIXES:
                call.stream = False  # refused: nothing streamed (its exchange would stream)
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (aiohttp cancels its handler)
            raise
        except ClientGone:
            # The client went away while we wrote to it; the upstream request is already
            # closed. aiohttp drops this response quietly on the dead connection.
            status = 499
            return web.Response(status=499)
        finally:
            duration = time.monotonic() - started
            call.status = status or 500  # 0: an unexpected exception, answered with a 500
            call.duration = duration
            if self.limits is not None:  # before the answer's x-ratelimit-* headers
                self.limits.settle(call)
            if self.gateway is not None:
                self.gateway.leave(call, outcome)
            self.accounting.over(call, model_label, call.status, endpoint_name)
            if tracer is not None:
                tracer.finish(request, call, call.status)

    async def _stage(
        self,
        request: ClientRequest,
        exchange: Exchange,
        lookup: Callable[[], ModelRoute],
        route: ModelRoute,
        key: bytes | None,
        call: Call,
        stage: Stage | None,
    ) -> web.StreamResponse | Failure | None:
        """The attempt loop on one route: pick a backend, try it, and on a retryable failure
        pick another, up to max_attempts. The answer, the last failure, or None when no
        backend could be tried."""
        balancer = self.balancer
        metrics = self.metrics
        model_label = call.model if stage is not None else route.name or call.endpoint
        any_4xx = stage is not None and "4xx" in stage.on
        excluded: set[str] = set()
        failure: Failure | None = None
        for _ in range(self._attempts):
            if failure is not None:
                try:  # the table may have changed since (a backend went down)
                    route = lookup()
                except ApiError:
                    break
            if stage is not None and stage.wait is not None and resting(route):
                break  # a chain with more stages does not wake an ejected backend
            found = balancer.pick(route, key, excluded)
            if isinstance(found, Full):
                if stage is not None and stage.wait is not None:
                    try:  # a chain moves on after its own (shorter) wait
                        async with asyncio.timeout(stage.wait):
                            found = await balancer.wait_pick(route, key, excluded, lookup)
                    except (TimeoutError, ApiError):
                        return Failure("full")
                else:
                    found = await balancer.wait_pick(route, key, excluded, lookup)
                if found is not None:
                    with contextlib.suppress(ApiError):
                        route = lookup()  # the table may have changed while we waited
            if found is None:
                break
            backend, label = found
            if failure is not None:
                label = RETRY
                metrics.retries.labels(call.backend, failure.reason).inc()
            rewrite = route.rewrites.get(backend.name)
            if stage is not None and stage.fallback:
                label = FALLBACK
                if rewrite is None and route.name != call.model:
                    rewrite = route.name  # the target's own name; the answer names the asked
            excluded.add(backend.name)
            metrics.decision(label)
            try:
                attempted = (
                    adapt(exchange, backend, call.usage_hidden) if backend.provider else exchange
                )
            except ApiError:  # a provider that does not serve this endpoint
                if stage is None:
                    raise
                continue  # in a chain: another backend, or the next stage, may serve it
            path, payload = attempted.upstream(backend, rewrite)
            call.backend = backend.name
            call.route = label
            call.served = rewrite or call.model
            balancer.acquire(backend)
            metrics.attempt_started(backend.name)
            tracer = self.tracer
            if tracer is not None:
                tracer.attempt(request, backend.name, str(backend.url(path)), label)
            try:
                result = await self._try(
                    Attempt(
                        request,
                        attempted,
                        backend,
                        label,
                        path,
                        payload,
                        call,
                        model_label,
                        any_4xx,
                    )
                )
            finally:
                balancer.release(backend)
                metrics.attempt_ended(backend.name)
            if tracer is not None:
                tracer.attempt_done(request, result)
            if isinstance(result, Failure):
                failure = result
                continue
            return result
        return failure


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than the limit of {limit} bytes.",
        code="request_too_large",
    )
