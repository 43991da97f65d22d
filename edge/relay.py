"""Writing an answer to the client: the response headers relayed, and bytes that know a dead
client from a failed backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, cast

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.compression_utils import MAX_SYNC_CHUNK_SIZE
from aiohttp.http import HttpVersion11, StreamWriter
from multidict import CIMultiDict, istr

from edge.client_request import ClientRequest
from edge.errors import EdgeError
from edge.h1answer import NOT_RELAYED, Answer
from edge.table import BackendState

# As istr: set on every answer, and multidict need not fold an istr's case.
BACKEND_HEADER: Final = istr("X-Corral-Backend")
ROUTE_HEADER: Final = istr("X-Corral-Route")


class RelayResponse(web.StreamResponse):
    # Keep the headers buffered until the first chunk, so both leave in one segment
    # (a lone header segment can wait for a delayed ACK before the first chunk follows).
    _send_headers_immediately = False


def relay_headers(
    upstream: aiohttp.ClientResponse | Answer,
    backend: BackendState,
    label: str,
    into: CIMultiDict[str] | None = None,
) -> CIMultiDict[str]:
    """The backend's response headers the client gets (added to `into` when given: a
    response's own headers, not copied once more by its constructor)."""
    headers: CIMultiDict[str] = CIMultiDict() if into is None else into
    if isinstance(upstream, Answer):  # chosen while its head was parsed
        headers.extend(upstream.relayed)
    else:
        for name, value in upstream.headers.items():
            if name.lower() not in NOT_RELAYED:
                headers.add(name, value)
    headers[BACKEND_HEADER] = backend.name
    headers[ROUTE_HEADER] = label
    return headers


def whole_response(status: int, body: bytes, headers: CIMultiDict[str]) -> web.Response:
    """`web.Response(status=status, body=body, headers=headers)` made without copying the
    headers: they become the response's own (the caller's fresh multidict, not used again).
    What web.Response's constructor does for bytes and no content type, minus the copy and
    its argument checks, ~0.8 µs less per answer (tests/edge/test_aiohttp_private.py)."""
    response: web.Response = _new_response(web.Response)
    _stream_init(response, status=status, _real_headers=headers)
    response.body = body
    response._zlib_executor_size = MAX_SYNC_CHUNK_SIZE
    response._zlib_executor = None
    return response


_new_response: Final = web.Response.__new__
_stream_init: Final = web.StreamResponse.__init__


class ClientGone(EdgeError):
    """The client hung up while we wrote to it."""


async def to_client(
    relay: RelayResponse, data: bytes | None, request: ClientRequest | None = None
) -> None:
    """Write to the client (prepare first when given the request; None ends the stream);
    a dead client connection becomes ClientGone, never mistaken for a backend failure.
    The request is aiohttp's or the lane's, which prepares a stream as aiohttp's does
    (edge/lane/stream.py)."""
    try:
        if request is not None:
            prepared = cast(web.BaseRequest, request)
            version = prepared.version
            if version is not HttpVersion11 and version < HttpVersion11:
                relay.force_close()  # as in stage
            await relay.prepare(prepared)
        if data is None:
            await relay.write_eof()
        else:
            await relay.write(data)
    except ConnectionResetError:
        raise ClientGone from None


async def stage(
    request: ClientRequest,
    upstream: aiohttp.ClientResponse | Answer,
    backend: BackendState,
    label: str,
) -> tuple[RelayResponse, AbstractStreamWriter]:
    """A stream's response made ready before its first chunk came: headers relayed and
    prepared (the response hooks run, the head serialised and held back), nothing sent.
    Done while the backend computes its first token, so that the first chunk then only has
    to be written, together with the head. The request is aiohttp's or the lane's (as for
    to_client)."""
    relay = RelayResponse(status=200)
    relay_headers(upstream, backend, label, relay.headers).setdefault("Cache-Control", "no-cache")
    prepared = cast(web.BaseRequest, request)
    version = prepared.version
    if version is not HttpVersion11 and version < HttpVersion11:
        # Unframed for HTTP/1.0 (no chunks): only the close ends it, also for a client that
        # asked to keep the connection (aiohttp would keep it open: the client waits).
        relay.force_close()
    writer = await relay.prepare(prepared)
    assert writer is not None  # None only for a response already finished
    return relay, writer


def abandon(writer: AbstractStreamWriter) -> None:
    """A staged response that will never be sent (no first chunk came; the attempt failed):
    the response that answers instead replaces the held-back head when it is prepared, and
    must not have its body framed in chunks because the staged one was."""
    cast(StreamWriter, writer).chunked = False


def drop(writer: AbstractStreamWriter) -> None:
    """A started stream whose client took nothing for the client timeout: its connection is
    dropped with what waits for it (a close would wait for the client to take that first)."""
    transport = cast(StreamWriter, writer).transport
    if transport is not None:
        transport.abort()


class ChunkSink:
    """A started stream's chunks, framed here and written straight to the client's transport:
    one plain call a chunk instead of aiohttp's write coroutines (the held-back head goes out
    with the first chunk, through aiohttp's writer: `send`). The writer's byte counts do not
    include these chunks; its end of the stream (write_eof) is still the writer's."""

    __slots__ = ("_chunked", "_transport", "_writer")

    def __init__(self, writer: AbstractStreamWriter) -> None:
        stream = cast(StreamWriter, writer)
        self._writer = stream
        self._chunked = stream.chunked  # HTTP/1.0 clients: not chunked, the close ends it
        self._transport = stream.transport

    def put(self, data: bytes) -> bool:
        """Write one chunk; True when the client is not keeping up (then await drain())."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientGone
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        return transport.get_write_buffer_size() > 0

    async def drain(self) -> None:
        """Until the client took enough of what waits for it (aiohttp's flow control)."""
        try:
            await self._writer.drain()
        except ConnectionResetError:
            raise ClientGone from None


async def send(writer: AbstractStreamWriter, data: bytes) -> None:
    """The first chunk of a staged stream to the client, with the held-back head; a dead
    client connection becomes ClientGone."""
    try:
        await writer.write(data)
    except ConnectionResetError:
        raise ClientGone from None


async def piped(
    answer: Answer, relay: Callable[[bytes], bool], drain: Callable[[], Awaitable[None]]
) -> None:
    """A stream from the fast client relayed by the upstream connection's parser callback as
    each chunk arrives (Answer.pipe): no future and no task wake-up per chunk. `relay` writes
    one chunk (True: the client fell behind). The task waits only for the end, an error, or a
    client that fell behind: then it drains it (`drain`: the client's time, edge/attempt.py)
    and relays what queued meanwhile, in order."""
    while True:
        while answer.chunks:
            if relay(await answer.readany()):  # queued: returns at once
                await drain()
        if answer.done:
            if answer.error is not None:
                raise answer.error
            return
        answer.pipe = relay
        try:
            await answer.wait()
        finally:
            answer.pipe = None
        failed, answer.pipe_error = answer.pipe_error, None
        if failed is not None:
            raise failed
        await drain()
