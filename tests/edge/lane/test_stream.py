"""Streams written by the lane (edge/lane/stream.py): aiohttp's StreamResponse and writer on
the lane's connection, waiting while the client does not read, and the connection kept for
the next request or closed as the answer says."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from edge.client_request import ClientRequest
from edge.lane.protocol import LaneProtocol
from edge.lane.server import Lane, Route
from edge.relay import RelayResponse
from tests.edge.lane.support import post, read_answer
from tests.support.net import eventually

CHUNK = b"x" * 65536
CHUNKS = 256  # 16 MiB: far more than the socket buffers between the lane and the client


class Streamer:
    """A handler streaming CHUNKS chunks, counting those it got to write."""

    def __init__(self) -> None:
        self.written = 0

    async def __call__(self, request: ClientRequest) -> web.StreamResponse:
        response = RelayResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(CHUNKS):
            await response.write(CHUNK)
            self.written += 1
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def _lane(handler: Streamer) -> AsyncIterator[tuple[Lane, int]]:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    lane = Lane(runner, [Route("/v1/chat/completions", handler)], max_body=1024, client_timeout=30)
    server = await lane.listen("127.0.0.1", 0, reuse_port=False, backlog=8)
    try:
        yield lane, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await lane.shutdown(1)
        await runner.cleanup()


async def test_a_stream_waits_while_the_client_does_not_read() -> None:
    """The lane stops writing a stream the client doesn't read, then it gets every byte, chunked."""
    streamer = Streamer()
    async with _lane(streamer) as (lane, port):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        writer.write(post("/v1/chat/completions", b"{}"))
        (connection,) = await _connection(lane)
        await eventually(lambda: connection.writing_paused, within=15)
        for _ in range(10):
            await asyncio.sleep(0)
        assert streamer.written < CHUNKS  # held back, not buffered in the edge
        async with asyncio.timeout(60):
            answer = await read_answer(reader)
        writer.close()
    assert answer.status == 200 and answer.headers["transfer-encoding"] == "chunked"
    assert answer.body == CHUNK * CHUNKS


async def test_a_stream_keeps_the_connection_for_the_next_request_unless_closed() -> None:
    """After a stream the lane serves the connection's next request, unless `Connection: close`."""
    async with _lane(Streamer()) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        async with asyncio.timeout(30):
            for extra in ("", "", "Connection: close\r\n"):
                writer.write(post("/v1/chat/completions", b"{}", extra))
                answer = await read_answer(reader)
                assert answer.body == CHUNK * CHUNKS
            assert await reader.read() == b""  # closed by the lane
        writer.close()


async def _connection(lane: Lane) -> list[LaneProtocol]:
    await eventually(lambda: len(lane.connections) == 1, within=15)
    return list(lane.connections)


async def test_the_writer_waits_for_resume_or_the_connection_lost() -> None:
    """writable() returns at once unless paused; then on resume_writing or the connection lost."""

    class Transport:
        def __init__(self) -> None:
            self.reading = True

        def pause_reading(self) -> None:
            self.reading = False

        def resume_reading(self) -> None:
            self.reading = True

        def get_extra_info(self, name: str) -> None:
            return None

        def is_closing(self) -> bool:
            return False

    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        lane = Lane(runner, [], max_body=1024, client_timeout=30)
        for end in ("resume", "lost"):
            connection = LaneProtocol(lane)
            connection.connection_made(Transport())
            await connection.writable()  # not paused: at once
            connection.pause_writing()
            waiting = asyncio.ensure_future(connection.writable())
            await asyncio.sleep(0)
            assert not waiting.done()
            if end == "resume":
                connection.resume_writing()
            else:
                connection.connection_lost(None)
            await asyncio.wait_for(waiting, 5)
            connection.connection_lost(None)
    finally:
        await runner.cleanup()
