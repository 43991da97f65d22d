"""Slow and idle clients at the edge's HTTP API: slowloris headers cut off, a slow body a 408,
thousands of idle connections, while normal traffic keeps flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource

import orjson

from tests.edge.conftest import RunningEdge
from tests.fakes import FakeServer
from tests.hostile_http.support import (
    CLIENT_TIMEOUT,
    _address,
    assert_openai_error,
    closed_by_peer,
    good_requests,
    progress,
    read_answer,
    request,
    steady_traffic,
)


async def test_slowloris_headers_are_cut_off(edge_: RunningEdge) -> None:
    """Clients trickling header lines forever are disconnected; normal traffic flows meanwhile."""
    stop = asyncio.Event()
    closed = 0

    async def trickle() -> None:
        nonlocal closed
        reader, writer = await asyncio.open_connection(*_address(edge_))
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n")
        reading = asyncio.create_task(closed_by_peer(reader))
        try:
            i = 0
            while not reading.done() and not stop.is_set():
                with contextlib.suppress(ConnectionError):
                    writer.write(f"X-Slow-{i}: 1\r\n".encode())  # never the blank line
                    await writer.drain()
                i += 1
                await asyncio.wait({reading}, timeout=CLIENT_TIMEOUT / 5)
            assert reading.done(), "the edge kept a trickling client connected"
            assert await reading == b""  # cut off without an answer
            closed += 1
        finally:
            writer.close()

    async with steady_traffic(edge_) as counter:
        attackers = [asyncio.create_task(trickle()) for _ in range(50)]
        await progress(counter, 5)
        async with asyncio.timeout(30):
            await asyncio.gather(*attackers)
        stop.set()
    assert closed == 50


async def test_slow_body_is_408(edge_: RunningEdge, fake: FakeServer) -> None:
    """A client trickling its body gets a JSON 408 once the client timeout passes."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"s" * 200 + b'"}]}'
    async with steady_traffic(edge_) as counter:
        reader, writer = await asyncio.open_connection(*_address(edge_))
        writer.write(request("POST", "/v1/chat/completions", body)[: -len(body)])
        answering = asyncio.create_task(read_answer(reader))
        for byte in body[:-1]:  # one byte at a time, never the last one
            if answering.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.wait({answering}, timeout=CLIENT_TIMEOUT / 10)
        async with asyncio.timeout(30):
            answer = await answering
        assert_openai_error(answer, 408, "request_timeout")
        writer.close()
        await progress(counter)
    assert fake.requests_to("/v1/chat/completions") == [] or all(
        "sss" not in orjson.dumps(r.body_json).decode()
        for r in fake.requests_to("/v1/chat/completions")
    )


async def test_thousands_of_idle_connections(edge_: RunningEdge) -> None:
    """2,000 silent connections: the edge serves the official client, then closes every idle one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 6000  # 2,000 client ends, 2,000 edge ends, and room to spare
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(10):  # in batches: the listen backlog is 2,048
            idle += await asyncio.gather(
                *(asyncio.open_connection(*_address(edge_)) for _ in range(200))
            )
        await good_requests(edge_, 10)  # served while 2,000 sockets sit idle
        async with asyncio.timeout(60):
            leftovers = await asyncio.gather(*(closed_by_peer(r) for r, _ in idle))
        assert leftovers == [b""] * len(idle)  # closed without a word
        await good_requests(edge_, 3)
    finally:
        for _, writer in idle:
            writer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
