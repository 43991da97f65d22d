"""What the lane's tests share: the bodies they send, raw HTTP/1.1 over one connection
(requests written, answers read), and which server answered: the lane or aiohttp
(corral_edge_lane_handovers_total).

Which server answered is read from corral_edge_lane_handovers_total: each metrics read is on
a fresh connection (a GET: handed over itself), so between two reads the counter grows by
one plus the handovers of whatever the test did in between."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from tests.edge.conftest import RunningEdge

MODEL = "m"
ORIGIN = "https://app.example.com"
CHAT_BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
MESSAGES_BODY = orjson.dumps(
    {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
)


class Answer:
    def __init__(self, head: str, headers: dict[str, str], body: bytes) -> None:
        self.status = int(head.split(" ", 2)[1])
        self.head = head
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response with a Content-Length or chunked body, or read to the close."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if lines[0].split(" ")[1].startswith("1"):  # 100 Continue: the real answer follows
        return await read_answer(reader)
    if lines[0].split(" ")[1] in ("204", "304"):
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.read()
    return Answer(lines[0], headers, body)


@contextlib.asynccontextmanager
async def connection(edge: RunningEdge) -> AsyncIterator[tuple[asyncio.StreamReader, Any]]:
    host, _, port = edge.config.listen.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def exchange(edge: RunningEdge, *parts: bytes, answers: int = 1) -> list[Answer]:
    """Send `parts` (each written and drained on its own) on a new connection; read answers."""
    async with connection(edge) as (reader, writer):
        for part in parts:
            writer.write(part)
            await writer.drain()
        async with asyncio.timeout(15):
            return [await read_answer(reader) for _ in range(answers)]


def post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = (
        f"POST {path} HTTP/{version}\r\nHost: edge\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def handovers(edge: RunningEdge) -> int:
    (answer,) = await exchange(edge, b"GET /metrics HTTP/1.1\r\nHost: edge\r\n\r\n")
    found = re.search(rb"^corral_edge_lane_handovers_total (\S+)$", answer.body, re.M)
    assert found is not None
    return int(float(found.group(1)))


async def handed_over(edge: RunningEdge, *parts: bytes, answers: int = 1) -> list[Answer]:
    """The answers to `parts`, asserting aiohttp served them (one handover)."""
    before = await handovers(edge)
    result = await exchange(edge, *parts, answers=answers)
    assert await handovers(edge) == before + 2
    return result


async def in_lane(edge: RunningEdge, *requests: bytes) -> list[Answer]:
    """The answers to `requests`, sent one after the other's answer on one connection,
    asserting the lane served them all (no handover)."""
    before = await handovers(edge)
    answers = []
    async with connection(edge) as (reader, writer):
        for data in requests:
            writer.write(data)
            async with asyncio.timeout(15):
                answers.append(await read_answer(reader))
    assert await handovers(edge) == before + 1
    return answers


def assert_chat(answer: Answer, text: str = "hello") -> None:
    assert answer.status == 200, answer.body
    assert answer.json()["choices"][0]["message"]["content"] == f"[vllm-a] {text}"
