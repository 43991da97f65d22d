"""What the hostile-HTTP tests share: the edge's limits in these tests, normal traffic through
the official client (a few requests, or a steady stream for a whole block), and raw HTTP/1.1
over asyncio.open_connection (requests written, answers read, OpenAI error JSON checked).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from openai import AsyncOpenAI

from tests.edge.conftest import RunningEdge

MODEL = "m"
LIMIT = 64 * 1024  # the edge's max_body_bytes in these tests
CLIENT_TIMEOUT = 1.0  # the edge's client_timeout_seconds in these tests


def _address(edge: RunningEdge) -> tuple[str, int]:
    host, _, port = edge.config.listen.rpartition(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def sdk(edge: RunningEdge) -> AsyncIterator[AsyncOpenAI]:
    """The official client, one fresh connection per request (the edge closes idle
    keep-alive connections after CLIENT_TIMEOUT, which a pooled connection could race)."""
    transport = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
    client = AsyncOpenAI(
        base_url=f"{edge.url}/v1", api_key="unused", max_retries=0, http_client=transport
    )
    try:
        yield client
    finally:
        await client.close()


async def good_requests(edge: RunningEdge, count: int = 5) -> None:
    """`count` normal chat completions through the official client, all answered by the fake."""
    async with sdk(edge) as client:
        for i in range(count):
            answer = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"good {i}"}]
            )
            assert answer.choices[0].message.content == f"[vllm-a] good {i}"


@contextlib.asynccontextmanager
async def steady_traffic(edge: RunningEdge) -> AsyncIterator[list[int]]:
    """Normal requests in a loop for the whole block; any failure fails the test at exit.
    Yields the list of answered request counts (so a test can wait for progress)."""
    done: list[int] = [0]
    stop = asyncio.Event()

    async def loop() -> None:
        async with sdk(edge) as client:
            while not stop.is_set():
                answer = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "steady"}]
                )
                assert answer.choices[0].message.content == "[vllm-a] steady"
                done[0] += 1

    task = asyncio.create_task(loop())
    try:
        yield done
    finally:
        stop.set()
        await task  # raises what the steady client saw


async def progress(counter: list[int], more: int = 3) -> None:
    """Wait until the steady client has finished `more` further requests."""
    target = counter[0] + more
    async with asyncio.timeout(30):
        while counter[0] < target:
            await asyncio.sleep(0.01)


class RawAnswer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """One HTTP/1.1 response from a raw stream (Content-Length or read-to-close body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return RawAnswer(status, headers, body)


async def exchange(edge: RunningEdge, data: bytes) -> RawAnswer:
    """Send raw bytes on a new connection and read one answer."""
    reader, writer = await asyncio.open_connection(*_address(edge))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(15):
            return await read_answer(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Read until the edge closes the connection; what it sent before closing."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def assert_openai_error(answer: RawAnswer, status: int, code: str | None = None) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error
