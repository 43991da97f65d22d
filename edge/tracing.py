"""OpenTelemetry spans over OTLP/HTTP JSON, off unless `edge.observability.otlp_endpoint` is set.

Per request: a SERVER span for the edge request (GenAI semantic conventions: operation,
requested and served model, token usage), an INTERNAL span per attempt (which backend, which
routing decision, why it failed), and under each a CLIENT span for the call to the backend.
A request carrying W3C `traceparent` continues that trace (its sampled flag decides);
forwarding the header itself to backends is the header allow-list's business (issue 16).

Our own small exporter, no OpenTelemetry SDK: spans are plain dicts in a bounded queue,
posted in batches by one background task; a collector that is slow or down only costs
dropped spans (counted), never a request's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from edge.client_request import ClientRequest
from edge.exchange import Failure
from edge.gateway.call import Call
from edge.tasks import owned, supervise

log = logging.getLogger(__name__)

SERVER, CLIENT, INTERNAL = 2, 3, 1
STATUS_ERROR = 2
MAX_QUEUED = 8192
BATCH = 512
FLUSH_SECONDS = 1.0
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_OPERATIONS = {
    "chat": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "messages": "chat",
}


def _id(nbytes: int) -> str:
    return os.urandom(nbytes).hex()


def _attr(key: str, value: object) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": str(value)}}


@dataclass(slots=True)
class AttemptRecord:
    backend: str
    url: str
    route: str
    start_ns: int
    end_ns: int = 0
    error: str = ""
    status: int = 0


@dataclass(slots=True)
class Trace:
    trace_id: str
    parent_id: str  # the caller's span, "" for a new trace
    span_id: str = field(default_factory=lambda: _id(8))
    attempts: list[AttemptRecord] = field(default_factory=list)


TRACE: Final = web.RequestKey("corral_trace", Trace)


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) from a W3C traceparent; None when absent or bad."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    trace_id, parent_id, flags = match.groups()
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def _unix_ns(call: Call, monotonic: float) -> int:
    return int((call.time + (monotonic - call.started)) * 1e9)


class Tracer:
    def __init__(self, endpoint: str, service_name: str, edge_id: str) -> None:
        self.endpoint = endpoint
        self._resource = {
            "attributes": [
                _attr("service.name", service_name),
                _attr("service.instance.id", edge_id),
            ]
        }
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self.dropped = 0
        self.exported = 0

    # -- the request path ----------------------------------------------------------------

    def begin(self, request: ClientRequest) -> Trace | None:
        """Start tracing a request (None: the caller's trace is not sampled)."""
        parent = parse_traceparent(request.headers.get("traceparent"))
        if parent is None:
            trace = Trace(_id(16), "")
        else:
            trace_id, parent_id, sampled = parent
            if not sampled:
                return None
            trace = Trace(trace_id, parent_id)
        request[TRACE] = trace
        return trace

    def attempt(self, request: ClientRequest, backend: str, url: str, route: str) -> None:
        trace = request.get(TRACE)
        if trace is not None:
            trace.attempts.append(AttemptRecord(backend, url, route, time.time_ns()))

    def attempt_done(self, request: ClientRequest, result: object) -> None:
        """An attempt's outcome: a Failure (reason, status) or the answer (status)."""
        trace = request.get(TRACE)
        if trace is not None and trace.attempts:
            last = trace.attempts[-1]
            last.end_ns = time.time_ns()
            last.error = result.reason if isinstance(result, Failure) else ""
            last.status = int(getattr(result, "status", 0))

    def finish(self, request: ClientRequest, call: Call, status: int) -> None:
        """The request ended: queue its spans."""
        trace = request.get(TRACE)
        if trace is None:
            return
        operation = _OPERATIONS.get(call.endpoint, call.endpoint)
        start = _unix_ns(call, call.started)
        end = _unix_ns(call, call.started + call.duration)
        attrs = [
            _attr("gen_ai.operation.name", operation),
            _attr("http.request.method", request.method),
            _attr("url.path", request.path),
            _attr("http.response.status_code", status),
            _attr("corral.request_id", call.request_id),
        ]
        if call.model:
            attrs.append(_attr("gen_ai.request.model", call.model))
        if call.served:
            attrs.append(_attr("gen_ai.response.model", call.served))
        if call.prompt_tokens or call.completion_tokens:
            attrs.append(_attr("gen_ai.usage.input_tokens", call.prompt_tokens))
            attrs.append(_attr("gen_ai.usage.output_tokens", call.completion_tokens))
        if call.backend:
            attrs.append(_attr("corral.backend", call.backend))
            attrs.append(_attr("corral.route", call.route))
        if call.team:
            attrs.append(_attr("corral.team", call.team))
        if call.ttft is not None:
            attrs.append(_attr("corral.time_to_first_token_seconds", call.ttft))
        if call.error:
            attrs.append(_attr("error.type", call.error))
        name = f"{operation} {call.model}" if call.model else operation
        spans = [self._span(trace, trace.span_id, trace.parent_id, name, SERVER, start, end,
                            attrs, status >= 500)]  # fmt: skip
        for number, attempt in enumerate(trace.attempts, 1):
            attempt_id = _id(8)
            finished = attempt.end_ns or end
            failed = bool(attempt.error) or attempt.status >= 500
            common = [
                _attr("corral.backend", attempt.backend),
                _attr("corral.route", attempt.route),
            ]
            attempt_attrs = [*common, _attr("corral.attempt", number)]
            if attempt.error:
                attempt_attrs.append(_attr("error.type", attempt.error))
            spans.append(
                self._span(trace, attempt_id, trace.span_id, f"attempt {attempt.backend}",
                           INTERNAL, attempt.start_ns, finished, attempt_attrs, failed)
            )  # fmt: skip
            parts = urlsplit(attempt.url)
            client_attrs = [
                *common,
                _attr("gen_ai.operation.name", operation),
                _attr("server.address", parts.hostname or ""),
                _attr("server.port", parts.port or (443 if parts.scheme == "https" else 80)),
            ]
            if call.served:
                client_attrs.append(_attr("gen_ai.request.model", call.served))
            if attempt.status:
                client_attrs.append(_attr("http.response.status_code", attempt.status))
            if number == len(trace.attempts) and (call.prompt_tokens or call.completion_tokens):
                client_attrs.append(_attr("gen_ai.usage.input_tokens", call.prompt_tokens))
                client_attrs.append(_attr("gen_ai.usage.output_tokens", call.completion_tokens))
            client_name = f"{operation} {call.served}" if call.served else operation
            spans.append(
                self._span(trace, _id(8), attempt_id, client_name, CLIENT, attempt.start_ns,
                           finished, client_attrs, failed)
            )  # fmt: skip
        room = MAX_QUEUED - len(self._queue)
        if room < len(spans):
            self.dropped += len(spans)
            return
        self._queue.extend(spans)
        if len(self._queue) >= BATCH:
            self._wake.set()

    @staticmethod
    def _span(
        trace: Trace,
        span_id: str,
        parent_id: str,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        attributes: list[dict[str, Any]],
        error: bool,
    ) -> dict[str, Any]:
        span: dict[str, Any] = {
            "traceId": trace.trace_id,
            "spanId": span_id,
            "name": name,
            "kind": kind,
            "startTimeUnixNano": str(start_ns),
            "endTimeUnixNano": str(max(end_ns, start_ns)),
            "attributes": attributes,
        }
        if parent_id:
            span["parentSpanId"] = parent_id
        if error:
            span["status"] = {"code": STATUS_ERROR}
        return span

    # -- export ---------------------------------------------------------------------------

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Post queued spans in batches until cancelled (a last flush on the way out)."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_SECONDS):
                        await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    await self._post(session)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    while self._queue:
                        await self._post(session)

    async def _post(self, session: aiohttp.ClientSession) -> None:
        batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
        body = {
            "resourceSpans": [
                {
                    "resource": self._resource,
                    "scopeSpans": [{"scope": {"name": "corral.edge"}, "spans": batch}],
                }
            ]
        }
        try:
            async with session.post(
                self.endpoint,
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            ) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=resp.reason or ""
                    )
            self.exported += len(batch)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.dropped += len(batch)
            log.warning("OTLP export to %s failed (%r); %d spans dropped", self.endpoint, exc,
                        len(batch))  # fmt: skip


@contextlib.asynccontextmanager
async def exporting(tracer: Tracer) -> AsyncIterator[None]:
    """Run the exporter for the block."""
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        export = supervise(lambda: tracer.run(session), "OTLP exporter", lambda: None)
        async with owned(export, "edge-otlp-exporter"):
            yield


async def tracing(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: export the proxy's spans while the edge serves, when configured."""
    from edge.app import CONFIG, EDGE_ID, PROXY

    settings = app[CONFIG].observability
    if not settings.otlp_endpoint:
        yield
        return
    tracer = Tracer(settings.otlp_endpoint, settings.otlp_service_name, app[EDGE_ID])
    async with exporting(tracer):
        app[PROXY].tracer = tracer
        log.info("exporting spans to %s", settings.otlp_endpoint)
        try:
            yield
        finally:
            app[PROXY].tracer = None
