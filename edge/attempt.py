"""One try of one request on one backend, under one deadline: the request sent (the fast
client for plain-http backends, aiohttp's for the rest), and the answer relayed — read whole
(small; a backend that breaks mid-body can be retried), or a stream started and relayed chunk
by chunk, its response headers going out with the first chunk. edge/proxy.py's attempt loop
picks the backends and retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from edge import resend
from edge.balancer import Balancer
from edge.client_request import ClientRequest
from edge.deadlines import Deadline, Deadlines
from edge.exchange import Exchange, Failure
from edge.forward import Forwarding
from edge.gateway.call import Call
from edge.gateway.tokens import Meter, read_whole
from edge.h1answer import Answer
from edge.h1pool import Pool
from edge.inbound import NATIVE_PREFIXES
from edge.metrics import EdgeMetrics
from edge.providers.hosted import Pools, honour_retry_after
from edge.relay import (
    ChunkSink,
    ClientGone,
    RelayResponse,
    abandon,
    drop,
    piped,
    relay_headers,
    send,
    stage,
    to_client,
)
from edge.table import BackendState

log = logging.getLogger(__name__)

# A (read-only) multidict already, so aiohttp does not convert it on every request.
UPSTREAM_HEADERS: Final = CIMultiDictProxy(
    CIMultiDict({"Content-Type": "application/json", "Accept-Encoding": "identity"})
)
_UPSTREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError)
# Tried elsewhere but not held against the backend: overloaded (429), or it no longer has
# the model or endpoint the snapshot says it has (404, a stale snapshot).
_RETRYABLE: Final = frozenset((404, 429))
# Overloaded, come back later: a Retry-After is honoured (529: Anthropic's own).
_OVERLOADED: Final = frozenset((429, 503, 529))


# Made per request: not frozen (a frozen dataclass sets each field through
# object.__setattr__, about 5x the cost of a plain one).
@dataclass(slots=True, eq=False)
class Attempt:
    """One try of one request on one backend: what `Attempts` needs to make it."""

    request: ClientRequest
    exchange: Exchange
    backend: BackendState
    label: str  # the routing decision (sticky, least-connections, retry...)
    path: str
    payload: bytes | None
    call: Call  # the request's record (call.started: arrival, for time to first token)
    model: str  # the metrics label of the model
    # A fallback chain moves on after any 4xx here (its `on` says 4xx): a failure, not an
    # answer to relay.
    any_4xx_fails: bool = False


class Attempts:
    """Makes one attempt at a time (called by the proxy's attempt loop, edge/proxy.py)."""

    def __init__(
        self,
        balancer: Balancer,
        metrics: EdgeMetrics,
        session: aiohttp.ClientSession,
        pools: Pools,
        fast: Pool | None,
        forward: Forwarding,
        *,
        first_byte: float,
        idle: float,
        client: float,
    ) -> None:
        self.balancer = balancer
        self.metrics = metrics
        self.session = session
        self.pools = pools
        self.fast = fast
        self._forward = forward
        self._deadlines = Deadlines()
        self._first_byte = first_byte
        self._idle = idle
        # How long a stream waits for its client to take bytes (the client timeout, the
        # lane's too): that wait is the client's, not the backend's idleness.
        self._client = client
        # The loop it serves on, from the first attempt: asyncio.current_task() without one
        # costs a getpid() system call on Python 3.11 (a session is bound to one loop anyway).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, attempt: Attempt) -> web.StreamResponse | Failure:
        """One try on one backend, under one deadline: time to first byte until the answer
        starts, then the idle limit, pushed forward by every chunk; while a stream waits for
        its client to take bytes, the client timeout instead (expired: the client is gone)."""
        request, exchange, backend = attempt.request, attempt.exchange, attempt.backend
        label, path, payload = attempt.label, attempt.path, attempt.payload
        upstream: aiohttp.ClientResponse | Answer | None = None
        relay: RelayResponse | None = None  # set once bytes went to the client
        staged: RelayResponse | None = None  # a stream's response, prepared before its start
        meter: Meter | None = None  # set once a stream started
        deadlines = self._deadlines
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None  # aiohttp runs every handler in a task
        deadline = deadlines.start(task, self._first_byte)
        clean = False
        try:
            try:
                awaiting = backend.awaiting
                awaiting.add(deadline)
                url = backend.url(path)
                base = backend.headers or UPSTREAM_HEADERS
                fast = self.fast
                if fast is not None and url.scheme == "http" and not backend.provider:
                    lines = self._forward.lines(request.headers, base)
                    upstream = await fast.request(exchange.method, url, payload, base, lines)
                else:
                    sent = self._forward.headers(request.headers, base)
                    session = self.session if not backend.provider else self.pools.session(backend)
                    upstream = await resend.request(session, exchange.method, url, payload, sent)
                status = upstream.status
                if isinstance(upstream, Answer):  # read as its head was parsed
                    content_type = upstream.content_type or ""
                else:
                    content_type = upstream.headers.get("Content-Type", "")
                if not exchange.streams(status, content_type):
                    # Read whole, every piece of it pushing the idle limit (a body that is
                    # all there already waits for nothing: no push).
                    idle = self._idle
                    if isinstance(upstream, Answer):
                        while not upstream.done:
                            deadlines.push(deadline, idle)
                            await upstream.more()
                        data = await upstream.read()
                    else:
                        reader = upstream.content
                        pieces: list[bytes] = []
                        while True:
                            if not reader.is_eof():  # more to come
                                deadlines.push(deadline, idle)
                            piece = await reader.readany()
                            if not piece:
                                break
                            pieces.append(piece)
                        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    awaiting.discard(deadline)
                    clean = True
                    if (
                        status in _RETRYABLE
                        or status >= 500
                        or (attempt.any_4xx_fails and status >= 400)
                    ):
                        if status in _OVERLOADED:
                            honour_retry_after(backend, upstream.headers)
                        if status >= 500:
                            self.failed(backend)
                        body = exchange.error(status, data)
                        wait = upstream.headers.get("Retry-After", "")
                        answered = exchange.error_status(status)
                        return Failure(f"status_{status}", answered, body, content_type, wait)
                    self.balancer.succeeded(backend)
                    if exchange.stream and attempt.call.endpoint in NATIVE_PREFIXES:
                        # A native exchange streams whatever its answer does: this one is
                        # whole (an OpenAI one keeps what its client asked for).
                        attempt.call.stream = False
                    if status < 300:
                        read_whole(attempt.call, len(payload or b""), data, request)
                        if attempt.call.prompt is not None:
                            attempt.call.completion = data
                    return exchange.whole(
                        status, data, relay_headers(upstream, backend, label), backend
                    )
                content = upstream.content
                staged, writer = await stage(request, upstream, backend, label)
                # Made while the backend computes its first token, not after it came.
                call = attempt.call
                metering = Meter(call, len(payload or b""), call.usage_hidden)
                sink = ChunkSink(writer)
                first = await content.readany()
                awaiting.discard(deadline)
                if not first:
                    self.failed(backend)
                    return Failure("empty")
                relay = staged
                meter = metering
                await send(writer, exchange.first(meter.start(first), backend))
                call.ttft = ttft = time.monotonic() - call.started
                self.metrics.first_token(attempt.model, ttft)
                idle = self._idle
                chunk_of = exchange.chunk
                tap = meter.chunk
                put = sink.put
                if isinstance(upstream, Answer):  # relayed from its parser callback

                    def relay_one(chunk: bytes) -> bool:
                        deadlines.push(deadline, idle)
                        out = chunk_of(tap(chunk))
                        return bool(out) and put(out)

                    deadlines.push(deadline, idle)
                    await piped(upstream, relay_one, lambda: self._drain(sink, deadline))
                else:
                    while True:
                        deadlines.push(deadline, idle)
                        chunk = await content.readany()
                        if not chunk:
                            break
                        out = chunk_of(tap(chunk))
                        if out and put(out):
                            await self._drain(sink, deadline)
                clean = True
                self.balancer.succeeded(backend)
                deadline.client = True  # what is left waits on the client alone
                deadlines.push(deadline, self._client)
                held = meter.flush()
                tail = (chunk_of(held) if held else b"") + exchange.end()
                if tail:
                    await to_client(relay, tail)
                await to_client(relay, None)
                return relay
            except asyncio.CancelledError:
                if deadline.timed_out():
                    if deadline.client:  # it took nothing for the client timeout: gone
                        drop(writer)
                        raise ClientGone from None
                    raise TimeoutError from None
                raise
        except _UPSTREAM_ERRORS as exc:
            deadline.close()
            if clean and relay is not None:
                return relay  # the backend finished; only the client was too slow to take it
            if relay is None and not backend.alive:
                # Its agent reported it down while we waited: not a failure of its own
                # to count, just a request to place elsewhere.
                return Failure("backend_down")
            self.failed(backend)
            if relay is None:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("backend %s failed before answering: %r", backend.name, exc)
                if upstream is None:
                    return Failure("timeout" if isinstance(exc, TimeoutError) else "connect")
                return Failure("timeout" if isinstance(exc, TimeoutError) else "read")
            # The backend broke after bytes reached the client: no retry; end the stream
            # cleanly with an error event the client can see. Its record says so (a 200 cut
            # short is an error in the reports).
            log.warning("stream from backend %s cut mid-way: %r", backend.name, exc)
            cut = "timeout" if isinstance(exc, TimeoutError) else "stream_interrupted"
            attempt.call.error = cut
            with contextlib.suppress(TimeoutError, ClientGone):
                async with asyncio.timeout(self._idle):
                    await to_client(relay, exchange.cut(exc))
                    await to_client(relay, None)
            return relay
        finally:
            if staged is not None and relay is None:
                abandon(writer)  # the stream never started: another answer follows
            if meter is not None:
                meter.end()  # finished, cut or cancelled: tokens as far as they went
            deadline.close()
            backend.awaiting.discard(deadline)
            if upstream is not None:
                if clean:
                    upstream.release()
                else:
                    # Cancelled or broken mid-way: drop the connection so the backend stops.
                    upstream.close()

    async def _drain(self, sink: ChunkSink, deadline: Deadline) -> None:
        """Until the client took what waits for it: the client's time, under the client
        timeout (edge/relay.py drop), not the backend's idleness (its chunks wait meanwhile);
        the idle limit again after."""
        deadlines = self._deadlines
        deadline.client = True
        deadlines.push(deadline, self._client)
        await sink.drain()
        deadline.client = False
        deadlines.push(deadline, self._idle)

    def failed(self, backend: BackendState) -> None:
        """Count a failure of the backend's (ejected after repeated ones)."""
        if self.balancer.failed(backend):
            self.metrics.ejections.labels(backend.name).inc()
            log.warning("backend %s ejected after repeated failures", backend.name)
