"""A kept-alive upstream connection found closed is not a backend failure: the request is sent
again, to the same backend, on a fresh connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from corral.v1 import types_pb2
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, snapshot
from tests.support.net import free_port

ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Read one HTTP request (headers and Content-Length body); False at end of stream."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return True


@pytest.fixture
async def closing_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Answers the first request on a connection with keep-alive, then closes the connection
    when the next one arrives, unanswered (as llama-server does after a stream)."""
    answered: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await read_request(reader):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Keep-Alive: timeout=5, max=100\r\n"
                    b"Content-Length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
                )
                await writer.drain()
                answered.append(1)
                await read_request(reader)  # the next request on this connection: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}", answered
    finally:
        server.close()
        await server.wait_closed()


async def test_request_on_a_closed_keepalive_connection_is_sent_again(
    closing_server: tuple[str, list[int]],
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    http: aiohttp.ClientSession,
) -> None:
    """Every request is answered by the one backend, none counted as a retry or a failure."""
    url, answered = closing_server
    kind = types_pb2.BACKEND_TYPE_LLAMACPP
    snapshots.publish(snapshot(1, [backend("only", url, ["m"], kind=kind)]))
    running = await start_edge(snapshots, eject_after_failures=1)
    await running.wait_version(1)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(4):
        async with http.post(f"{running.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Corral-Route"] != "retry"
    assert len(answered) == 4
