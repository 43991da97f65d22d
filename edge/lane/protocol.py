"""One client connection of the lane: parse with httptools, serve the plain common case,
hand everything else to aiohttp before handling it.

The lane serves a message only when it is: a POST to one of the lane's routes (exact path, no
query), HTTP/1.1, a single Content-Length within max_body_bytes, no Transfer-Encoding,
Expect, Upgrade or Origin header, at most aiohttp's number of headers and none longer than
its limit, the whole message arrived within HANDOVER_AFTER_SECONDS of its first byte, and
nothing after it in the same read. Anything else, or a parser error, hands the connection to
aiohttp with every byte since the message began: aiohttp then answers exactly as it would
have (its own errors, limits and timeouts included). Streamed answers are written with
aiohttp's own response and writer (edge/lane/stream.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools
from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy

from edge.errors import error_body
from edge.lane.answer import finish_headers, head
from edge.lane.request import LaneRequest
from edge.lane.stream import ended

if TYPE_CHECKING:
    from edge.lane.server import Lane, Route

log = logging.getLogger(__name__)

# aiohttp's own limits on a request head (web_protocol.RequestHandler's defaults).
MAX_HEADERS: Final = 128
MAX_FIELD: Final = 8190
# A head still incomplete past this many bytes goes to aiohttp (nothing piles up here).
MAX_HEAD: Final = 1 << 16
# A message still incomplete this long after its first byte goes to aiohttp, which then
# applies its own timeouts to the rest (a slow client costs the lane nothing).
HANDOVER_AFTER_SECONDS: Final = 0.5
# Bytes a client may send ahead while its request is served before reading pauses.
_PENDING_LIMIT: Final = 1 << 16
# Headers that make a message aiohttp's (it refuses Sec-WebSocket-Key1 outright: a 400).
_REFUSED_HEADERS: Final = frozenset(
    (b"transfer-encoding", b"expect", b"upgrade", b"origin", b"sec-websocket-key1")
)
# Headers a message may hold once (aiohttp's strict parser answers a repeat with a 400, so a
# message with one goes to aiohttp); Content-Length is checked on its own.
_SINGLETONS: Final = frozenset(
    (
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"user-agent",
    )
)
_POST: Final = b"POST /v1/"  # how every message the lane may serve begins


class _Unusual(Exception):
    """The message is not the lane's: stop parsing, hand the connection over."""


class LaneProtocol(asyncio.Protocol):
    """A connection served by the lane until it is handed over or closed."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._parser: httptools.HttpRequestParser | None = None  # made for the first POST
        # Every byte since the current message began: its first read as it came (most
        # messages arrive in one), the reads after it joined in `_more` (no copy otherwise).
        self._first = b""
        self._more: bytearray | None = None
        self._pending = bytearray()  # bytes that came while a request was served
        self._url = b""
        self._headers: list[tuple[str, str]] = []  # decoded as aiohttp decodes them
        self._singles: list[bytes] = []  # the singleton headers the message has
        self._body: list[bytes] = []
        self._route: Route | None = None
        self._length = -1
        self._complete = False
        self._keep_alive = True
        self._task: asyncio.Task[None] | None = None
        # No timer per request: the idle one is armed once per client_timeout at most and
        # checks when the connection last went idle; the patience one only for a message
        # that did not arrive in one read.
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._patience: asyncio.TimerHandle | None = None
        self._paused = False  # the client sent too much ahead
        self._unread = False  # the client does not read its answers
        self._writable: asyncio.Future[None] | None = None  # a stream waits for the client

    # -- the connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = transport = cast(asyncio.Transport, transport)
        self._lane.connections.add(self)
        self._idle_since = self._loop.time()
        self._idle_timer = self._loop.call_at(
            self._idle_since + self._lane.client_timeout, self._idle_check
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.connections.discard(self)
        self._stop_timers()
        self._transport = None
        self._wake_writer()
        task = self._task
        if task is not None:
            task.cancel()  # the client hung up: its upstream request stops too

    def data_received(self, data: bytes) -> None:
        poll = self._lane.poll
        if poll is not None:
            poll()
        if self._task is not None:  # a request is being served: keep these for after
            self._pending += data
            if len(self._pending) > _PENDING_LIMIT and not self._paused:
                self._pause(True)
            return
        self._receive(data)

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests meanwhile."""
        self._unread = True
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._unread = False
        self._wake_writer()
        if not self._paused and self._transport is not None:
            self._transport.resume_reading()

    @property
    def transport(self) -> asyncio.Transport | None:
        """The connection's transport while it is the lane's and open."""
        return self._transport

    @property
    def writing_paused(self) -> bool:
        """The client is not taking what was written to it (a stream then waits)."""
        return self._unread

    async def writable(self) -> None:
        """Until the client takes what waits for it, or the connection is gone."""
        if not self._unread or self._transport is None:
            return
        if self._writable is None:
            self._writable = self._loop.create_future()
        await asyncio.shield(self._writable)

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run_hooks(self, request: LaneRequest, response: web.StreamResponse) -> None:
        """The response hooks, each plain one called as it is (edge/response_hook.py)."""
        for plain, hook in self._lane.hooks:
            if plain is not None:
                plain(request, response)
            else:
                await hook(request, response)

    def _pause(self, paused: bool) -> None:
        self._paused = paused
        if not self._unread and self._transport is not None:
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The request being served, if one is."""
        return self._task

    @property
    def idle(self) -> bool:
        """No request in flight and none begun."""
        return self._task is None and not self._first

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- parsing ---------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if not self._first:
            if not data.startswith(_POST) and not _POST.startswith(data):
                self.hand_over(data)  # not a POST to /v1/: aiohttp's, without parsing it here
                return
            self._first = data
            received = len(data)
        else:
            more = self._more
            if more is None:
                more = self._more = bytearray()
            more += data
            received = len(self._first) + len(more)
        parser = self._parser
        if parser is None:
            parser = self._parser = self._first_post()
        try:
            parser.feed_data(data)
        except Exception:  # unusual, malformed or upgrading: aiohttp's to answer
            self.hand_over()
            return
        if self._route is None and received > MAX_HEAD:  # aiohttp's limits apply
            self.hand_over()
            return
        if not self._complete:
            if self._patience is None:  # it did not come in one read: wait a little
                wait = min(HANDOVER_AFTER_SECONDS, self._lane.client_timeout)
                self._patience = self._loop.call_later(wait, self.hand_over)
            return
        if self._patience is not None:
            self._patience.cancel()
            self._patience = None
        route = self._route
        assert route is not None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep_alive = self._keep_alive
        request = LaneRequest(
            self._lane.app,
            route.path,
            CIMultiDictProxy(CIMultiDict(self._headers)),
            body,
            self._remote,
            self,
            keep_alive and not self._lane.closing,
        )
        self._task = self._loop.create_task(self._serve(request, route, keep_alive))

    def _first_post(self) -> httptools.HttpRequestParser:
        """The parser, the client's address (aiohttp's request.remote), and TCP keepalive as
        aiohttp sets on every connection it accepts (a connection handed over gets it there)."""
        assert self._transport is not None
        tcp_keepalive(self._transport)
        peer = self._transport.get_extra_info("peername")
        if isinstance(peer, (list, tuple)):
            self._remote = str(peer[0])
        elif peer is not None:
            self._remote = str(peer)
        return httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        if self._complete:  # a second message in the same read: aiohttp serves both
            raise _Unusual

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._lane.longest_path:
            raise _Unusual

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= MAX_HEADERS or len(name) > MAX_FIELD or len(value) > MAX_FIELD:
            raise _Unusual
        lowered = name.lower()
        if lowered in _REFUSED_HEADERS:
            raise _Unusual
        if lowered in _SINGLETONS:
            seen = self._singles
            if lowered in seen:
                raise _Unusual
            seen.append(lowered)
        # Trailing whitespace is not the value's (llhttp keeps it; aiohttp's parser does not).
        value = value.rstrip(b" \t")
        if lowered == b"content-length":
            if self._length >= 0 or not value.isdigit():
                raise _Unusual
            self._length = int(value)
        # As aiohttp reads them: UTF-8, undecodable bytes kept as surrogates.
        headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        route = self._lane.routes.get(self._url)
        if (
            route is None
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or not 0 <= self._length <= self._lane.max_body
            or b"host" not in self._singles  # HTTP/1.1 requires it: aiohttp answers 400
        ):
            raise _Unusual
        self._route = route
        self._keep_alive = parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- serving ---------------------------------------------------------------------------

    async def _serve(self, request: LaneRequest, route: Route, keep_alive: bool) -> None:
        try:
            try:
                response = await route.handler(request)
            except Exception:  # the handler is guarded: this is a bug, answered like aiohttp
                log.exception("unexpected error serving POST %s", request.path)
                response = _internal_error()
            transport = self._transport
            if transport is None or transport.is_closing():
                return  # the client went away meanwhile
            keep_alive = keep_alive and not self._lane.closing
            whole: web.Response | None = None
            if isinstance(response, web.Response):
                whole = response
            elif response.prepared:  # a stream, written as it went (edge/lane/stream.py)
                keep_alive = keep_alive and bool(response.keep_alive) and ended(response)
            else:  # a bug: the edge's handlers answer with one or the other
                log.error("the lane cannot write an unprepared %s", type(response).__name__)
                whole = _internal_error()
            if whole is not None:  # written here, without a coroutine of its own
                try:
                    body, keep_alive = finish_headers(whole, keep_alive)
                    for plain, hook in self._lane.hooks:  # as run_hooks, inline
                        if plain is not None:
                            plain(request, whole)
                        else:
                            await hook(request, whole)
                    data = head(whole)
                except Exception:
                    log.exception("could not write the answer to POST %s", request.path)
                    keep_alive = False
                else:
                    if len(body) < 65536:
                        transport.write(data + body)
                    else:
                        transport.writelines((data, body))
            if not keep_alive:
                transport.close()
                return
        except asyncio.CancelledError:
            return  # the client went away (or the edge stopped): nothing to answer
        finally:
            self._task = None
        self._next_message()

    def _next_message(self) -> None:
        self._first = b""
        self._more = None
        self._url = b""
        self._headers = []
        self._singles = []
        self._body = []
        self._route = None
        self._length = -1
        self._complete = False
        self._idle_since = self._loop.time()
        if self._paused:
            self._pause(False)
        if self._pending:
            pending, self._pending = bytes(self._pending), bytearray()
            self._receive(pending)

    # -- handing over and timers -----------------------------------------------------------

    def hand_over(self, data: bytes | None = None) -> None:
        """From now on the connection is aiohttp's, starting with the current message (or
        `data`, when that is the first of it)."""
        self._stop_timers()
        self._lane.connections.discard(self)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._transport = None
        handler = self._lane.aiohttp_handler()
        transport.set_protocol(handler)
        unread = self._unread
        if self._paused or unread:
            transport.resume_reading()
        handler.connection_made(transport)
        if unread:  # the transport will not say so again: aiohttp's writes must wait too
            handler.pause_writing()
        if data is None:
            data = self._first if self._more is None else self._first + self._more
        if data:
            handler.data_received(data)

    def _idle_check(self) -> None:
        """Close the connection once idle for client_timeout; else look again later."""
        now = self._loop.time()
        if not self.idle:  # busy now: a request in flight or arriving (patience's job)
            due = now + self._lane.client_timeout
        elif now - self._idle_since >= self._lane.client_timeout:
            self._idle_timer = None
            self.close()
            return
        else:
            due = self._idle_since + self._lane.client_timeout
        self._idle_timer = self._loop.call_at(due, self._idle_check)

    def _stop_timers(self) -> None:
        for timer in (self._idle_timer, self._patience):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._patience = None


def _internal_error() -> web.Response:
    return web.Response(
        status=500,
        body=error_body("Internal error in the edge.", "server_error", None, "internal_error"),
        content_type="application/json",
    )
