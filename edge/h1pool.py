"""A lean HTTP/1.1 client for plain-http backends: pooled keep-alive connections on
asyncio.Protocol, responses parsed by llhttp (httptools, as uvicorn uses it).

Chosen by `edge.upstream_client: fast` (corral.config): edge/proxy.py then sends requests
to plain-http backends here instead of through aiohttp's ClientSession; TLS backends (hosted
providers) stay on aiohttp. Per request it does less than aiohttp's general client: the
request head is serialised once per (host, path, headers) and reused, the body goes out in
the same write as the head when it is small, and the parser's body chunks (SSE events,
JSON) are handed to the caller as they are, without joining or copying.

The answer (edge/h1answer.py) has the few parts of aiohttp.ClientResponse the proxy uses.
Failures are the exceptions the
attempt loop already sorts: an OSError (ConnectionError) before or after the headers,
TimeoutError for a connect that takes longer than connect_timeout_seconds; time to first
byte and idle limits stay the proxy's own (edge/deadlines.py cancels the task).

A kept-alive connection the server closed while it sat idle is noticed when the close
arrives (connection_lost: the connection leaves the pool) or, in a race, when the request
on it fails before any byte of an answer: the request then goes once more on a fresh
connection (as edge/resend.py does for aiohttp).
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import time
from collections.abc import Callable
from typing import Any, Final, cast

from multidict import CIMultiDictProxy
from mypy_extensions import mypyc_attr
from yarl import URL

from edge.h1answer import NOT_RELAYED_RAW, Answer, text

_HIGH_WATER: Final = 256 * 1024  # buffered body bytes before the socket stops being read
_SMALL_BODY: Final = 64 * 1024  # bodies up to this go out in one write with the head
_HEADS_MAX: Final = 1024  # cached request heads


# httptools is loaded by the first Pool (the edge's RSS, and venvs built before it was a
# dependency, pay nothing while upstream_client is aiohttp).
_httptools: Any = None


# A Python class when compiled (edge/native.py): mypyc's classes cannot derive from OSError.
@mypyc_attr(native_class=False)
class UpstreamClosed(ConnectionError):
    """The backend closed the connection (or sent bytes that are not HTTP) mid-answer."""


class _Conn(asyncio.Protocol):
    """One connection to one backend, carrying one request at a time."""

    __slots__ = (
        "_answer",
        "_between",
        "_closed",
        "_parser",
        "_paused",
        "_waiter",
        "idle_since",
        "key",
        "loop",
        "poll",
        "transport",
    )

    def __init__(self, key: tuple[str, int], poll: Callable[[], None] | None = None) -> None:
        self.key = key
        self.poll = poll  # called on every read (edge/busypoll.py), when busy polling is on
        # Its answers' futures are made on it (asyncio.get_running_loop costs a getpid()
        # system call per call on Python 3.11).
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = _httptools.HttpResponseParser(self)
        # The parser ended a message and has not begun another: it can parse the next
        # answer as it is (llhttp resets itself), no new parser per request.
        self._between = True
        self._answer: Answer | None = None
        self._closed = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small requests leave at once (no Nagle wait for an ACK)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        poll = self.poll
        if poll is not None:
            poll()
        if self._answer is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except _httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"bad HTTP from the backend: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        answer = self._answer
        if answer is not None and not answer.done:
            if answer.status and answer.until_close:
                answer.finish(reusable=False)  # a body delimited by the close itself
            else:
                why = "closed the connection" if exc is None else f"connection broke: {exc}"
                self._fail(UpstreamClosed(f"the backend {why}"))

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        self._between = False
        answer = self._answer
        if answer is not None and answer.done:
            # A second message in the bytes after the answer ended: nobody asked for it, and
            # none of it is the answer's (its headers and body were merged in). Ignored, as
            # bytes after an answer are (the next send starts a fresh parser).
            self._answer = None

    def on_header(self, name: bytes, value: bytes) -> None:
        answer = self._answer
        if answer is not None and not answer.status:  # not a chunked body's trailers
            answer.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        answer = self._answer
        if answer is None:
            return
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): the real one follows
            answer.raw_headers.clear()
            return
        answer.status = status
        # Only the relayed headers are decoded here (the proxy reads those and the content
        # type); the full multidict is made from the raw pairs if someone reads `headers`.
        relayed = answer.relayed
        framed = False
        for name, value in answer.raw_headers:
            lower = name.lower()
            if lower not in NOT_RELAYED_RAW:
                pair = (text(name), text(value))  # as aiohttp's client decodes them
                relayed.append(pair)
                if lower == b"content-type" and answer.content_type is None:
                    answer.content_type = pair[1]
            elif lower == b"content-length":
                framed = True
            elif lower == b"transfer-encoding":
                # Framed only when chunked is the last coding (RFC 9112 §6.3): any other
                # coding's body runs to the close.
                framed = value.rstrip().lower().endswith(b"chunked")
        answer.until_close = not framed
        answer.keep_alive = self._parser.should_keep_alive()
        if answer.head_only:
            # An answer to HEAD has no body whatever its headers say; the parser does not
            # know the method, so the connection is not reused after it.
            answer.finish(reusable=False)
        answer.wake()

    def on_body(self, body: bytes) -> None:
        answer = self._answer
        if answer is not None:
            pipe = answer.pipe
            if pipe is not None and not answer.chunks:  # relayed here (edge/relay.py: piped)
                try:
                    if pipe(body):  # the client fell behind: its task drains it
                        answer.pipe = None
                        answer.wake()
                except Exception as exc:  # the task raises it
                    answer.pipe = None
                    answer.pipe_error = exc
                    answer.wake()
                return
            answer.chunks.append(body)
            answer.buffered += len(body)
            if (
                answer.buffered > _HIGH_WATER
                and not answer.whole
                and not self._paused
                and self.transport
            ):
                self._paused = True
                self.transport.pause_reading()
            answer.wake()

    def on_message_complete(self) -> None:
        self._between = True
        answer = self._answer
        if answer is not None and answer.status:
            answer.finish(reusable=answer.keep_alive)

    # -- used by the pool and the answer --

    @property
    def usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()

    def send(self, answer: Answer, head: bytes, body: bytes | None) -> None:
        self._answer = answer
        if not self._between:  # bytes of another message came after the last answer
            self._parser = _httptools.HttpResponseParser(self)
            self._between = True
        transport = self.transport
        assert transport is not None
        if body is None or len(body) <= _SMALL_BODY:
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            transport.write(body)

    def drained(self, buffered: int) -> None:
        if self._paused and buffered <= _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _fail(self, exc: Exception) -> None:
        answer = self._answer
        if answer is not None and not answer.done:
            answer.error = exc
            answer.done = True
            answer.wake()

    def detach(self) -> None:
        self._answer = None

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections per (host, port), most recently used first."""

    def __init__(self, *, connect_timeout: float, keepalive: float = 60.0) -> None:
        global _httptools
        if _httptools is None:
            _httptools = importlib.import_module("httptools")
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._heads: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], bytes] = {}
        # Per URL (a backend's URLs are made once, edge/table.py): the method and headers
        # object last sent to it and their head, found without building `_heads`' key.
        self._last: dict[URL, tuple[str, CIMultiDictProxy[str], bytes]] = {}
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._closed = False
        # Given to every connection made from now on (edge/busypoll.py); None: off.
        self.poll: Callable[[], None] | None = None

    def put(self, conn: _Conn) -> None:
        if self._closed or not conn.usable:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            poll = self.poll
            _, conn = await loop.create_connection(lambda: _Conn(key, poll), key[0], key[1])
        return conn

    def _pooled(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        oldest = time.monotonic() - self._keepalive
        while idle:
            conn = idle.pop()
            if conn.usable and conn.idle_since > oldest:
                return conn
            conn.close()
        return None

    def head(self, method: str, url: URL, headers: CIMultiDictProxy[str]) -> bytes:
        """The request line and headers (without Content-Length), serialised once per
        distinct (method, host, target, headers)."""
        last = self._last.get(url)
        if last is not None and last[0] == method and last[1] is headers:
            return last[2]
        target = url.raw_path_qs
        host = url.raw_authority
        cache_key = (method, host, target, tuple(headers.items()))
        head = self._heads.get(cache_key)
        if head is None:
            lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
            if len(self._heads) >= _HEADS_MAX:
                self._heads.clear()
            self._heads[cache_key] = head
        if len(self._last) >= _HEADS_MAX:
            self._last.clear()
        self._last[url] = (method, headers, head)
        return head

    async def request(
        self,
        method: str,
        url: URL,
        body: bytes | None,
        headers: CIMultiDictProxy[str],
        lines: bytes = b"",
    ) -> Answer:
        """Send one request and wait for the answer's status and headers. `lines`: header
        lines of this request alone (each ending in CRLF), after the cached head's."""
        head = self.head(method, url, headers)
        key = (url.raw_host or "", url.port or 80)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head = b"%b%bContent-Length: %d\r\n\r\n" % (head, lines, len(body or b""))
        else:
            head = b"%b%b\r\n" % (head, lines)
        conn = self._pooled(key)
        fresh = conn is None
        while True:
            if conn is None:
                conn = await self._connect(key)
            answer = Answer(self, conn)
            answer.head_only = method == "HEAD"
            try:
                conn.send(answer, head, body)
                while not answer.status:
                    if answer.done:
                        assert answer.error is not None
                        raise answer.error
                    # Answer.wait inlined: no coroutine frame of its own to resume.
                    answer.waiter = waiter = conn.loop.create_future()
                    try:
                        await waiter
                    finally:
                        answer.waiter = None
            except UpstreamClosed:
                answer.close()
                if fresh:
                    raise
                # A kept-alive connection the server had closed: once more, fresh.
                conn, fresh = None, True
                continue
            except BaseException:
                answer.close()
                raise
            return answer

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
