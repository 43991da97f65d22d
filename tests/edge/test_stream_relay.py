"""A stream's chunks after the first go straight to the client's connection (edge/relay.py
ChunkSink): chunked for HTTP/1.1, as they are for HTTP/1.0 (ended by the close, also when it
asked to keep the connection), held back for a slow client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, snapshot
from tests.support.net import free_port

MODEL = "m"
STREAM = orjson.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "go"}]}
)
CHUNKS = 256
PAD = 64 * 1024  # 16 MiB in all: more than every buffer between the backend and the client


def event(i: int) -> bytes:
    return b"data: %d %s\n\n" % (i, bytes([97 + i % 26]) * PAD)


async def big_stream(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(CHUNKS):
        await response.write(event(i))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def edge(snapshots: SnapshotServer, start_edge: StartEdge) -> AsyncIterator[RunningEdge]:
    """An edge in front of a backend streaming 16 MiB."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", big_stream)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        snapshots.publish(snapshot(1, [backend("big", f"http://127.0.0.1:{port}", [MODEL])]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        yield running
    finally:
        await runner.cleanup()


async def exchange(running: RunningEdge, version: bytes, receive_buffer: int) -> bytes:
    """The raw answer to one streamed chat request, read in small pieces through a small
    receive window (the client is the slow end)."""
    host, port = running.config.listen.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    head = b"POST /v1/chat/completions %s\r\nHost: e\r\nContent-Type: application/json\r\n" % (
        version
    )
    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(STREAM) + STREAM)
    pieces = []
    while piece := await reader.read(4096):
        pieces.append(piece)
        if version == b"HTTP/1.1" and b"".join(pieces[-2:]).endswith(b"\r\n0\r\n\r\n"):
            break
    writer.close()
    return b"".join(pieces)


def unchunk(body: bytes) -> bytes:
    out, at = [], 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end], 16)
        if size == 0:
            assert body[end:] == b"\r\n\r\n"
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        assert body[end + 2 + size : end + 4 + size] == b"\r\n"
        at = end + 4 + size


EXPECTED = b"".join(event(i) for i in range(CHUNKS)) + b"data: [DONE]\n\n"


async def test_a_slow_client_gets_every_byte_chunked_in_order(edge: RunningEdge) -> None:
    """HTTP/1.1 through a small receive window: 16 MiB of events, chunk-framed, intact."""
    raw = await asyncio.wait_for(exchange(edge, b"HTTP/1.1", 8192), 60)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head
    assert unchunk(body) == EXPECTED


async def test_an_http10_client_gets_the_stream_unframed_until_the_close(
    edge: RunningEdge,
) -> None:
    """HTTP/1.0 (no chunked encoding): the events as they are, ended by the close."""
    raw = await asyncio.wait_for(exchange(edge, b"HTTP/1.0", 65536), 60)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    assert b"Transfer-Encoding" not in head
    assert body == EXPECTED


async def short_stream(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(b"data: %d\n\n" % i)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
@pytest.mark.parametrize("server", ["lane", "aiohttp"])
async def test_an_http10_client_keeping_its_connection_still_gets_the_closing_end(
    server: str, client: str, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """HTTP/1.0 with Connection: keep-alive: the unframed stream still ends with the close."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", short_stream)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        snapshots.publish(snapshot(1, [backend("short", f"http://127.0.0.1:{port}", [MODEL])]))
        running = await start_edge(snapshots, server=server, upstream_client=client)
        await running.wait_version(1)
        host, listen = running.config.listen.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(listen))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.0\r\nHost: e\r\nConnection: keep-alive\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(STREAM), STREAM)
        )
        async with asyncio.timeout(5):  # it waited for the client timeout (75 s)
            raw = await reader.read()
        writer.close()
    finally:
        await runner.cleanup()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 200 OK")
    assert b"keep-alive" not in head.lower()
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
