"""Hostile bodies and sizes at the edge's HTTP API: bad JSON, types, UTF-8 and nesting are
OpenAI-shaped 400s while odd but valid bodies are served; huge declared and chunked bodies are
413s; oversized request lines and heads are refused (414, 431).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.edge.conftest import RunningEdge
from tests.fakes import FakeServer
from tests.hostile_http.support import (
    LIMIT,
    _address,
    assert_openai_error,
    closed_by_peer,
    exchange,
    good_requests,
    progress,
    read_answer,
    request,
    steady_traffic,
)

# -- bodies: JSON, types, UTF-8, nesting ------------------------------------------------------


NESTED_300 = b"[" * 300 + b"]" * 300
NESTED_2000 = b"[" * 2000 + b"]" * 2000


@pytest.mark.parametrize(
    "body",
    [
        # Invalid UTF-8 inside a JSON string, outside strings, and overlong encodings.
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "m\xc3", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
        b'\xff{"model": "m"}',
        # A lone surrogate escape, a byte-order mark, numbers JSON cannot hold.
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'\xef\xbb\xbf{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": NaN}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1'
        + b"0" * 400
        + b"}",
        # Nesting the edge could read but not write again, and nesting it cannot read.
        b'{"model": "m", "messages": [{"role": "user", "content": ' + NESTED_300 + b"}]}",
        b'{"model": "m", "messages": [{"role": "user", "content": ' + NESTED_2000 + b"}]}",
        # Wrong types where routing looks.
        b'{"model": ["m"], "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": {"id": "m"}, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "messages": {"role": "user", "content": "x"}}',
        b'{"model": "m", "messages": [{"role": 1, "content": "x"}]}',
        b'{"model": "m", "messages": [null]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": 1}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 5}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": "2"}',
        # Truncated and trailing garbage.
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}]} trailing',
        b"\x00" * 64,
    ],
)
async def test_bad_bodies_are_json_400s(edge_: RunningEdge, fake: FakeServer, body: bytes) -> None:
    """Invalid UTF-8, bad JSON, absurd nesting and wrong types: a JSON 400, nothing forwarded."""
    answer = await exchange(edge_, request("POST", "/v1/chat/completions", body))
    error = assert_openai_error(answer, 400)
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in error["message"]
    assert fake.requests_to("/v1/chat/completions") == []
    await good_requests(edge_, 1)


async def test_odd_but_valid_bodies_are_served(edge_: RunningEdge, fake: FakeServer) -> None:
    """Odd valid JSON (NULs, duplicate keys, deep nesting, non-ASCII) is forwarded byte for byte."""
    bodies = [
        b'{"model": "m", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
        b'{"model": "x", "model": "m", "messages": [{"role": "user", "content": "dup"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "whatever": [1, {}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "'
        b"\xe6\x97\xa5\xf0\x9f\x90\x8e"
        b'"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "d", "extra": '
        + b"[" * 200
        + b"]" * 200
        + b"}]}",
    ]
    for body in bodies:
        answer = await exchange(edge_, request("POST", "/v1/chat/completions", body))
        assert answer.status == 200, answer.body[:300]
        assert answer.headers["x-fake-backend"] == "vllm-a"
    assert len(fake.requests_to("/v1/chat/completions")) == len(bodies)


# -- sizes: bodies, headers, lines ------------------------------------------------------------


async def test_declared_huge_body_is_413_before_it_is_sent(edge_: RunningEdge) -> None:
    """A Content-Length over the limit is answered 413 from the headers alone."""
    async with steady_traffic(edge_) as counter:
        reader, writer = await asyncio.open_connection(*_address(edge_))
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10 * 1024**3}\r\n\r\n"
        )
        writer.write(head.encode())  # and not one byte of the 10 GiB body
        await writer.drain()
        async with asyncio.timeout(15):
            answer = await read_answer(reader)
        assert_openai_error(answer, 413, "request_too_large")
        writer.close()
        await progress(counter)


async def test_chunked_body_over_the_limit_is_413(edge_: RunningEdge) -> None:
    """A chunked body that grows past the limit is cut off with a 413 (no length to trust)."""
    async with steady_traffic(edge_) as counter:
        reader, writer = await asyncio.open_connection(*_address(edge_))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 8192

        async def send() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(4 * LIMIT // len(chunk)):  # four times the limit, then stop
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()

        sender = asyncio.create_task(send())
        async with asyncio.timeout(15):
            answer = await read_answer(reader)
        assert_openai_error(answer, 413, "request_too_large")
        await sender
        writer.close()
        await progress(counter)


@pytest.mark.parametrize(
    "data",
    [
        # One header value far past aiohttp's 8 KiB line limit.
        request("GET", "/v1/models", extra="X-Big: " + "a" * 100_000 + "\r\n"),
        # Five hundred small headers (the limit is 128).
        request("GET", "/v1/models", extra="".join(f"X-H{i}: v\r\n" for i in range(500))),
        # A request line (URL) of 100 KB.
        request("GET", "/v1/models/" + "a" * 100_000),
    ],
    ids=["huge-header", "many-headers", "huge-url"],
)
async def test_oversized_heads_are_refused(
    edge_: RunningEdge, data: bytes, request: pytest.FixtureRequest
) -> None:
    """Huge header lines and too many headers: a JSON 431; a huge URL a JSON 414; closed."""
    status = 414 if request.node.callspec.id == "huge-url" else 431
    async with steady_traffic(edge_) as counter:
        reader, writer = await asyncio.open_connection(*_address(edge_))
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        async with asyncio.timeout(15):
            answer = await read_answer(reader)
            assert_openai_error(answer, status)
            assert await closed_by_peer(reader) == b""
        writer.close()
        await progress(counter)
