"""edge/h1pool.py against real sockets: keep-alive, framing, cuts, hangs and big bodies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import uvloop
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edge.h1answer import Answer
from edge.h1pool import Pool, UpstreamClosed
from tests.support.net import free_port

HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw TCP server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = free_port()
        self.closed = asyncio.Event()  # set when a connection's reader saw EOF
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def url(self, path: str = "/v1/chat/completions") -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", server.port)
    try:
        yield server
    finally:
        server.server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's body (Content-Length framed); None at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def answering(raw: bytes) -> Handler:
    """A backend that reads one request and writes `raw` back."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return reply


async def fetch_once(pool: Pool, raw: bytes) -> tuple[Answer, bytes]:
    """One request to a backend answering `raw`: the answer (released) and its body."""
    async with serving(answering(raw)) as server:
        up = await pool.request("POST", server.url(), b"{}", HEADERS)
        body = await up.read()
        up.release()
    return up, body


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while (body := await read_request(reader)) is not None:
        writer.write(answer(body))
        await writer.drain()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool(connect_timeout=2.0)
    yield p
    await p.close()


async def test_keep_alive_reuses_one_connection(pool: Pool) -> None:
    """Three requests in turn travel on one connection, each answered with its own body."""
    async with serving(echo_forever) as server:
        for i in range(3):
            up = await pool.request("POST", server.url(), b'{"n":%d}' % i, HEADERS)
            assert up.status == 200
            assert await up.read() == b'{"n":%d}' % i
            up.release()
        assert server.connections == 1


async def test_server_closing_idle_connection_is_noticed(pool: Pool) -> None:
    """A server that closes after each answer costs a new connection, never a failed request."""

    closed = asyncio.Event()

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        assert body is not None
        writer.write(answer(body))  # keep-alive implied (HTTP/1.1), then closed anyway
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async with serving(once) as server:
        for i in range(3):
            closed.clear()
            up = await pool.request("POST", server.url(), b"x%d" % i, HEADERS)
            assert await up.read() == b"x%d" % i
            up.release()
            await closed.wait()  # the server closed before the next request is sent
        assert server.connections == 3


async def test_stale_connection_race_is_sent_again(pool: Pool) -> None:
    """A pooled connection closed as the next request is sent: resent once on a fresh one."""

    async def answer_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        assert body is not None
        writer.write(answer(body, b"Keep-Alive: timeout=5\r\n"))
        await writer.drain()
        await read_request(reader)  # the second request: closed unanswered

    async with serving(answer_then_drop) as server:
        up = await pool.request("POST", server.url(), b"a", HEADERS)
        assert await up.read() == b"a"
        up.release()
        up = await pool.request("POST", server.url(), b"b", HEADERS)
        assert await up.read() == b"b"
        up.release()
        assert server.connections == 2


async def test_chunked_answer_arrives_chunk_by_chunk(pool: Pool) -> None:
    """An SSE answer in chunked encoding is handed over event by event as it arrives."""
    gate = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for event in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await gate.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await echo_forever(reader, writer)

    async with serving(sse) as server:
        up = await pool.request("POST", server.url(), b"{}", HEADERS)
        assert up.headers["Content-Type"] == "text/event-stream"
        assert await up.content.readany() == b"data: 1\n\n"
        gate.set()
        assert await up.content.readany() == b"data: 2\n\n"
        assert await up.content.readany() == b""
        up.release()
        again = await pool.request("POST", server.url(), b"{}", HEADERS)
        assert await again.read() == b"{}"
        again.release()
        assert server.connections == 1  # the chunked answer ended cleanly: kept alive


async def test_answer_delimited_by_close(pool: Pool) -> None:
    """An answer without length or chunking ends where the server closes; not reused."""

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with serving(until_close) as server:
        up = await pool.request("GET", server.url("/v1/models"), None, HEADERS)
        assert await up.read() == b"all of it"
        up.release()


async def test_head_answer_has_no_body(pool: Pool) -> None:
    """An answer to HEAD ends at its headers although they announce a length."""

    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
            await writer.drain()

    async with serving(head) as server:
        for _ in range(2):
            async with asyncio.timeout(5):
                up = await pool.request("HEAD", server.url("/api/tags"), None, HEADERS)
                assert up.content_length == 42
                assert await up.read() == b""
            up.release()
        assert server.connections == 2  # not reused: the parser cannot know it was HEAD


async def test_cut_mid_body_fails_the_read(pool: Pool) -> None:
    """A Content-Length body cut short is an OSError on read, never a short answer."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async with serving(cut) as server:
        up = await pool.request("POST", server.url(), b"{}", HEADERS)
        assert up.status == 200
        with pytest.raises(UpstreamClosed):
            await up.read()
        up.close()


async def test_close_before_answer_is_a_connection_error(pool: Pool) -> None:
    """A fresh connection closed without an answer fails the request (not resent)."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with serving(drop) as server:
        with pytest.raises(OSError):
            await pool.request("POST", server.url(), b"{}", HEADERS)
        assert server.connections == 1


async def test_refused_connection_is_an_oserror(pool: Pool) -> None:
    """Nobody listening: the connect fails with an OSError at once."""
    with pytest.raises(OSError):
        await pool.request("POST", URL(f"http://127.0.0.1:{free_port()}/x"), b"{}", HEADERS)


async def test_hang_is_cut_by_the_callers_timeout(pool: Pool) -> None:
    """A backend that never answers: the caller's timeout ends the wait and the connection."""
    seen_eof = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client closes
        seen_eof.set()

    async with serving(hang) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await pool.request("POST", server.url(), b"{}", HEADERS)
        async with asyncio.timeout(5):
            await seen_eof.wait()  # the abandoned connection was closed, not pooled


async def test_big_bodies_both_ways(pool: Pool) -> None:
    """8 MiB up and back down through the parser's chunks and the read pause, byte exact."""
    body = bytes(range(256)) * (8 * 4096)
    async with serving(echo_forever) as server:
        up = await pool.request("POST", server.url(), body, HEADERS)
        assert up.content_length == len(body)
        received = bytearray()
        while chunk := await up.content.readany():
            received += chunk
        assert received == body
        up.release()
        up = await pool.request("POST", server.url(), b"small", HEADERS)
        assert await up.read() == b"small"
        up.release()
        assert server.connections == 1


async def test_a_big_answer_read_whole_is_not_left_paused(pool: Pool) -> None:
    """read() of an answer past the read pause's mark gets all of it (it waited forever)."""
    body = bytes(range(256)) * (4 * 4096)  # 4 MiB: paused once 256 KiB wait
    async with serving(echo_forever) as server:
        up = await pool.request("POST", server.url(), body, HEADERS)
        async with asyncio.timeout(10):
            assert await up.read() == body
        up.release()


async def test_request_head_is_exact(pool: Pool) -> None:
    """The request line, Host, the given headers and Content-Length, nothing else."""
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(2)
        writer.write(answer(b"ok"))
        await writer.drain()

    async with serving(record) as server:
        up = await pool.request("POST", server.url("/v1/x?a=1"), b"{}", HEADERS)
        await up.read()
        up.release()
        # A request's own header lines go after the cached head's, before Content-Length.
        up = await pool.request("POST", server.url("/v1/x?a=1"), b"{}", HEADERS, b"a: 1\r\n")
        await up.read()
        up.release()
    common = b"POST /v1/x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
    assert heads == [
        common % server.port + b"Content-Length: 2\r\n\r\n",
        common % server.port + b"a: 1\r\nContent-Length: 2\r\n\r\n",
    ]


def test_on_uvloop() -> None:
    """The edge's loop (uvloop, whose transports differ): reuse, chunked, a big body, a cut."""

    async def scenarios() -> None:
        pool = Pool(connect_timeout=2.0)
        try:
            await test_keep_alive_reuses_one_connection(pool)
            await test_chunked_answer_arrives_chunk_by_chunk(pool)
            await test_big_bodies_both_ways(pool)
            await test_cut_mid_body_fails_the_read(pool)
            await test_hang_is_cut_by_the_callers_timeout(pool)
        finally:
            await pool.close()

    uvloop.run(scenarios())


async def test_relayed_headers_leave_out_hop_by_hop(pool: Pool) -> None:
    """Relayed headers: the backend's, in order, minus framing and hop-by-hop ones the edge sets."""

    up, body = await fetch_once(
        pool,
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-A: 1\r\nDate: today\r\n"
        b"Content-Type: application/json\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive"
        b"\r\nx-ratelimit-remaining: 9\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert body == b"{}"
    assert up.relayed == [
        ("X-A", "1"),
        ("Content-Type", "application/json"),
        ("x-ratelimit-remaining", "9"),
    ]
    assert up.headers["Date"] == "today"  # all of them still readable
    assert up.content_type == "application/json"


async def test_extra_bytes_after_an_answer_do_not_reach_the_next(pool: Pool) -> None:
    """Bytes a backend sends after a whole answer are not parsed into the next request's answer."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"one") + b"HTTP/1.1 500 Nope\r\nX-Half: ")
        await writer.drain()
        await read_request(reader)
        writer.write(answer(b"two", b"Content-Type: text/plain\r\n"))
        await writer.drain()
        await reader.read()

    async with serving(reply) as server:
        first = await pool.request("POST", server.url(), b"{}", HEADERS)
        assert await first.read() == b"one"
        assert first.content_type is None and first.headers.get("Content-Type") is None
        first.release()
        second = await pool.request("POST", server.url(), b"{}", HEADERS)
        assert (second.status, await second.read()) == (200, b"two")
        assert second.content_type == "text/plain"
        second.release()
        assert server.connections == 1  # the same connection, its parser started afresh


async def test_trailers_are_not_headers(pool: Pool) -> None:
    """Trailers join neither an answer's headers nor its relayed ones, read before or after them."""

    up, body = await fetch_once(
        pool,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Checksum\r\n\r\n2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n",
    )
    assert body == b"ok"
    assert "X-Checksum" not in up.headers
    assert up.headers["Trailer"] == "X-Checksum"
    assert ("X-Checksum", "abc") not in up.relayed


async def test_a_message_after_the_answer_is_not_merged_into_it(pool: Pool) -> None:
    """An answer followed by an unasked second one in the same bytes: the first alone."""
    stray = answer(b"EVIL!", b"X-Evil: 1\r\n")
    async with serving(answering(answer(b"{}", b"X-A: 1\r\n") + stray)) as server:
        up = await pool.request("POST", server.url(), b"{}", HEADERS)
        assert await up.read() == b"{}"
        assert up.relayed == [("X-A", "1")]
        up.release()


async def test_a_body_in_another_coding_than_chunked_runs_to_the_close(pool: Pool) -> None:
    """Transfer-Encoding: gzip with no length: the body is what came before the close."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nabc"

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    async with serving(once) as server:
        up = await pool.request("POST", server.url(), b"{}", HEADERS)
        assert await up.read() == b"abc"
        up.release()


async def test_header_bytes_are_decoded_as_aiohttps_client_decodes_them(pool: Pool) -> None:
    """UTF-8 header values, and bytes that are not UTF-8, read as aiohttp's client reads them."""
    raw = (
        b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\r\nX-B: caf\xe9\r\nContent-Type: text/plain; "
        b"x=\xe2\x9c\x93\r\nContent-Length: 2\r\n\r\n{}"
    )
    up, _ = await fetch_once(pool, raw)
    async with (
        serving(answering(raw)) as server,
        aiohttp.ClientSession() as session,
        session.post(server.url(), data=b"{}") as theirs,
    ):
        expected = list(theirs.headers.items())
    assert list(up.headers.items()) == expected
    assert up.relayed == [(n, v) for n, v in expected if n != "Content-Length"]
    assert up.content_type == "text/plain; x=\u2713"
    assert up.headers["X-A"] == "caf\u00e9"
