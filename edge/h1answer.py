"""The answer of edge/h1pool.py: status and headers once they arrived, then the body in
chunks, with the few parts of aiohttp.ClientResponse the proxy uses (status, headers, read(),
content.readany(), release(), close()). Its connection fills it (edge/h1pool.py's _Conn) and
the caller drains it; release() gives the connection back to the pool when it can be reused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from edge.h1pool import Pool, _Conn

# Response headers not relayed to the client: set by the edge's server for its own answer,
# or meaningless past this hop (edge/relay.py).
# fmt: off
NOT_RELAYED: Final = frozenset((
    "connection", "keep-alive", "transfer-encoding", "content-length", "date", "server",
    "proxy-connection", "upgrade", "trailer", "te",
))
# fmt: on
NOT_RELAYED_RAW: Final = frozenset(name.encode() for name in NOT_RELAYED)


def text(raw: bytes) -> str:
    """A header's name or value as aiohttp reads one (its client, and the lane): UTF-8, bytes
    that are not UTF-8 kept as surrogates. Written back as UTF-8 (aiohttp's server, the lane),
    the client gets the backend's bytes, not Latin-1 ones re-encoded (surrogates: dropped)."""
    try:
        return raw.decode()  # nearly always: no error handler to look up
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


class Answer:
    """A backend's answer: status and headers once they arrived, then the body in chunks."""

    __slots__ = (
        "_conn",
        "_headers",
        "_loop",
        "_pool",
        "buffered",
        "chunks",
        "content_type",
        "done",
        "error",
        "head_only",
        "keep_alive",
        "pipe",
        "pipe_error",
        "raw_headers",
        "relayed",
        "reusable",
        "status",
        "until_close",
        "waiter",
        "whole",
    )

    def __init__(self, pool: Pool, conn: _Conn) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self._loop = conn.loop
        self.status = 0
        self._headers: CIMultiDictProxy[str] | None = None
        # Every header as it came (an interim answer's dropped), decoded only for `headers`.
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_type: str | None = None  # the first Content-Type header's value
        # The headers a client gets relayed (all but NOT_RELAYED), in the backend's order.
        self.relayed: list[tuple[str, str]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.done = False
        self.reusable = False
        self.keep_alive = False
        self.until_close = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.head_only = False
        # Read whole (`read`): nobody takes chunks to drain it, so its socket is never paused.
        self.whole = False
        # Set by edge/relay.py's piped: chunks go to it, not the queue; what it raised kept.
        self.pipe: Callable[[bytes], bool] | None = None
        self.pipe_error: Exception | None = None

    # The parts of aiohttp.ClientResponse the proxy reads.

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Every header of the answer (none before they arrived), made at first use."""
        headers = self._headers
        if headers is None:
            if not self.status:
                return _NO_HEADERS
            pairs = [(text(n), text(v)) for n, v in self.raw_headers]
            headers = self._headers = CIMultiDictProxy(CIMultiDict(pairs))
        return headers

    @property
    def content(self) -> Answer:
        return self

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isascii() and value.isdigit() else None

    async def readany(self) -> bytes:
        """The next chunk of the body as the parser gave it; b"" at its end."""
        while not self.chunks:
            if self.done:
                if self.error is not None:
                    raise self.error
                return b""
            await self.wait()
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self._conn is not None:
            self._conn.drained(self.buffered)
        return chunk

    async def read(self) -> bytes:
        """The whole body."""
        self._whole()
        while not self.done:
            await self.wait()
        if self.error is not None:
            raise self.error
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        return data

    async def more(self) -> None:
        """Until more of a body read whole (`read`) came, or its end: the caller can tell the
        backend is not idle. Its socket is not paused meanwhile."""
        self._whole()
        await self.wait()

    def _whole(self) -> None:
        """Read whole from now on: nobody takes chunks to drain it, so its socket reads on."""
        if not self.whole:
            self.whole = True
            if self._conn is not None:
                self._conn.drained(0)  # paused while its first chunks waited: read on

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it can be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.detach()
            if self.done and self.reusable and self.error is None and not self.chunks:
                self._pool.put(conn)
            else:
                conn.close()

    def close(self) -> None:
        """Drop the connection (cancelled or broken mid-way: the backend stops)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.detach()
            conn.close()

    # Called by the connection.

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def finish(self, *, reusable: bool) -> None:
        self.done = True
        self.reusable = reusable
        self.wake()

    async def wait(self) -> None:
        """Until the connection has news for the answer."""
        self.waiter = self._loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


_NO_HEADERS: Final[CIMultiDictProxy[str]] = CIMultiDictProxy(CIMultiDict())
