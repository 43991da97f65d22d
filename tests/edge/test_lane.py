"""The lane (edge/lane/): the plain OpenAI POSTs served by it over real sockets, everything
unusual handed to aiohttp with the bytes that came, answers identical to aiohttp's.

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
import pytest

from corral.config import CorsConfig
from tests.edge import conftest as edge_fixtures
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes

http = edge_fixtures.http
snapshots = edge_fixtures.snapshots
start_edge = edge_fixtures.start_edge

MODEL = "m"
ORIGIN = "https://app.example.com"
CHAT_BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})
MESSAGES_BODY = orjson.dumps(
    {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (f,):
        yield f


async def _edge(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer, server: str
) -> RunningEdge:
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    running = await start_edge(
        snapshots,
        server=server,
        max_body_bytes=64 * 1024,
        cors=CorsConfig(allow_origins=(ORIGIN,)),
    )
    await running.wait_version(1)
    return running


@pytest.fixture
async def lane(snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer) -> RunningEdge:
    return await _edge(snapshots, start_edge, fake, "lane")


@pytest.fixture
async def plain(snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer) -> RunningEdge:
    return await _edge(snapshots, start_edge, fake, "aiohttp")


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


async def test_keep_alive_connection_serves_many_requests(lane: RunningEdge) -> None:
    """Three requests on one connection are all answered by the lane."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "again"}]})
    before = await handovers(lane)
    async with connection(lane) as (reader, writer):
        for _ in range(3):
            writer.write(post("/v1/chat/completions", body))
            answer = await read_answer(reader)
            assert_chat(answer, "again")
            assert "connection" not in answer.headers
    assert await handovers(lane) == before + 1


async def test_completions_and_embeddings_are_served_by_the_lane(lane: RunningEdge) -> None:
    """/v1/completions and /v1/embeddings are lane routes too."""
    completion = orjson.dumps({"model": MODEL, "prompt": "hi"})
    embedding = orjson.dumps({"model": MODEL, "input": "hi"})
    first, second = await in_lane(
        lane, post("/v1/completions", completion), post("/v1/embeddings", embedding)
    )
    assert first.status == 200 and first.json()["object"] == "text_completion"
    assert second.status == 200 and second.json()["object"] == "list"


async def test_messages_api_is_served_by_the_lane(lane: RunningEdge) -> None:
    """/v1/messages and /v1/messages/count_tokens are lane routes, answered in Anthropic's shape."""
    message, count = await in_lane(
        lane, post("/v1/messages", MESSAGES_BODY), post("/v1/messages/count_tokens", MESSAGES_BODY)
    )
    assert message.status == 200 and message.json()["type"] == "message"
    assert message.json()["content"][0]["text"] == "[vllm-a] hello"
    assert count.status == 200 and count.json()["input_tokens"] > 0


async def test_body_split_over_segments_is_served_by_the_lane(lane: RunningEdge) -> None:
    """A head and a body written separately (as httpx does) are served by the lane."""
    data = post("/v1/chat/completions", CHAT_BODY)
    before = await handovers(lane)
    (answer,) = await exchange(lane, data[:20], data[20:-10], data[-10:])
    assert_chat(answer)
    assert await handovers(lane) == before + 1


async def test_bad_requests_get_openai_errors_from_the_lane(lane: RunningEdge) -> None:
    """Bad JSON, a missing model and an unknown model are OpenAI errors, served in the lane."""
    unknown = orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    bad, missing, absent = await in_lane(
        lane,
        post("/v1/chat/completions", b"{not json"),
        post("/v1/chat/completions", b'{"messages": []}'),
        post("/v1/chat/completions", unknown),
    )
    assert bad.status == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert missing.status == 400 and missing.json()["error"]["param"] == "model"
    assert absent.status == 404 and absent.json()["error"]["code"] == "model_not_found"
    assert absent.headers["content-type"] == "application/json"


async def test_connection_close_is_honoured(lane: RunningEdge) -> None:
    """A client asking Connection: close gets it and the edge closes the connection."""
    async with connection(lane) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY, "Connection: close\r\n"))
        async with asyncio.timeout(15):
            answer = await read_answer(reader)
            assert await reader.read() == b""  # closed by the edge
    assert_chat(answer)
    assert answer.headers["connection"] == "close"


async def test_client_disconnect_cancels_the_upstream_request(
    lane: RunningEdge, fake: FakeServer
) -> None:
    """A client hanging up while the backend works cancels the request to the backend."""
    fake.hold()
    async with connection(lane) as (_, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        await writer.drain()
        await fake.wait_inflight(1)
    await fake.wait_until(lambda: fake.cancelled == 1)
    fake.release()
    assert fake.completed == 0


STREAM_BODY = orjson.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "s"}]}
)
ESCAPED_STREAM_BODY = (
    b'{"model": "m", "str\\u0065am": true, "messages": [{"role": "user", "content": "s"}]}'
)


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([post("/v1/chat/completions", STREAM_BODY)], id="stream"),
        pytest.param([post("/v1/chat/completions", ESCAPED_STREAM_BODY)], id="escaped-stream"),
        pytest.param([post("/v1/chat/completions", CHAT_BODY, version="1.0")], id="http-1.0"),
        pytest.param(
            [
                post("/v1/chat/completions", b"", "Expect: 100-continue\r\n").replace(
                    b"Content-Length: 0", f"Content-Length: {len(CHAT_BODY)}".encode()
                ),
                CHAT_BODY,
            ],
            id="100-continue",
        ),
        pytest.param(
            [
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                + f"{len(CHAT_BODY):x}\r\n".encode()
                + CHAT_BODY
                + b"\r\n0\r\n\r\n"
            ],
            id="chunked",
        ),
        pytest.param(
            [post("/v1/chat/completions", CHAT_BODY, f"Origin: {ORIGIN}\r\n")], id="origin"
        ),
        pytest.param([post("/v1/chat/completions?x=1", CHAT_BODY)], id="query"),
        pytest.param(
            [post("/v1/messages", MESSAGES_BODY.replace(b'"model"', b'"stream":true,"model"'))],
            id="messages-stream",
        ),
    ],
)
async def test_unusual_chat_requests_are_handed_to_aiohttp(
    lane: RunningEdge, parts: list[bytes]
) -> None:
    """Each unusual form of a chat request is answered by aiohttp, correctly."""
    (answer,) = await handed_over(lane, *parts)
    assert answer.status == 200, answer.body
    if answer.headers["content-type"].startswith("text/event-stream"):
        assert answer.body.rstrip().endswith((b"data: [DONE]", b'{"type":"message_stop"}'))
    else:
        assert answer.json()["choices"][0]["message"]["content"].startswith("[vllm-a] ")


async def test_cors_preflight_is_handed_to_aiohttp(lane: RunningEdge) -> None:
    """An OPTIONS preflight is aiohttp's, with its CORS answer."""
    (answer,) = await handed_over(
        lane,
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nOrigin: "
        + ORIGIN.encode()
        + b"\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    )
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == ORIGIN


async def test_other_routes_are_handed_to_aiohttp(lane: RunningEdge) -> None:
    """GET /v1/models, an unknown path and a GET on a lane route are aiohttp's answers."""
    (models,) = await handed_over(lane, b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n")
    assert [m["id"] for m in models.json()["data"]] == [MODEL]
    (unknown,) = await handed_over(lane, post("/v1/nowhere", CHAT_BODY))
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "unknown_path"
    (wrong,) = await handed_over(lane, b"GET /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n\r\n")
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"


async def test_a_get_after_a_lane_request_is_handed_over(lane: RunningEdge) -> None:
    """On a kept-alive connection the lane served, a GET that follows goes to aiohttp."""
    before = await handovers(lane)
    async with connection(lane) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        async with asyncio.timeout(15):
            assert_chat(await read_answer(reader))
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n")
            models = await read_answer(reader)
            assert [m["id"] for m in models.json()["data"]] == [MODEL]
            writer.write(post("/v1/chat/completions", CHAT_BODY))  # aiohttp's from now on
            assert_chat(await read_answer(reader))
    assert await handovers(lane) == before + 2


async def test_pipelined_requests_are_answered_in_order(lane: RunningEdge) -> None:
    """Two requests in one write are handed to aiohttp, which answers both in order."""
    second = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "two"}]})
    first_answer, second_answer = await handed_over(
        lane,
        post("/v1/chat/completions", CHAT_BODY) + post("/v1/chat/completions", second),
        answers=2,
    )
    assert_chat(first_answer)
    assert_chat(second_answer, "two")


async def test_a_request_sent_during_another_is_served_after_it(
    lane: RunningEdge, fake: FakeServer
) -> None:
    """A request written while the previous one is in flight is answered after it."""
    fake.hold()
    second = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "two"}]})
    before = await handovers(lane)
    async with connection(lane) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        await writer.drain()
        await fake.wait_inflight(1)
        writer.write(post("/v1/chat/completions", second))
        await writer.drain()
        fake.release()
        async with asyncio.timeout(15):
            assert_chat(await read_answer(reader))
            assert_chat(await read_answer(reader), "two")
    assert await handovers(lane) == before + 1


async def test_malformed_request_gets_aiohttps_json_refusal(lane: RunningEdge) -> None:
    """A request line the parser refuses is answered by aiohttp's JSON 400."""
    (answer,) = await handed_over(lane, b"POST /v1/chat/completions HTTP/1.1 junk\r\n\r\n")
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "bad_http_request"


# The headers that differ per answer, or per backend connection.
_VARYING = frozenset(("date", "x-request-id"))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(post("/v1/chat/completions", CHAT_BODY), id="chat"),
        pytest.param(post("/v1/embeddings", b'{"model": "m", "input": "x"}'), id="embeddings"),
        pytest.param(post("/v1/chat/completions", b"[1, 2"), id="bad-json"),
        pytest.param(post("/v1/completions", b'{"model": "zz", "prompt": "x"}'), id="no-model"),
        pytest.param(post("/v1/chat/completions", CHAT_BODY, "Connection: close\r\n"), id="close"),
        pytest.param(post("/v1/messages", MESSAGES_BODY), id="messages"),
        pytest.param(post("/v1/messages", b'{"model": "m"}'), id="messages-invalid"),
    ],
)
async def test_answers_match_aiohttps(lane: RunningEdge, plain: RunningEdge, data: bytes) -> None:
    """The lane's answer has aiohttp's status line, headers (in order) and body."""
    (ours,) = await in_lane(lane, data)
    (theirs,) = await exchange(plain, data)
    assert ours.head == theirs.head
    assert [h for h in ours.headers if h not in _VARYING] == [
        h for h in theirs.headers if h not in _VARYING
    ]
    for name, value in theirs.headers.items():
        if name not in _VARYING:
            assert ours.headers[name] == value, name
    assert _stable(ours.body) == _stable(theirs.body)


def _stable(body: bytes) -> Any:
    """The body without the fields that differ per answer (ids, creation times)."""
    data = orjson.loads(body)
    if isinstance(data, dict):
        for field in ("id", "created"):
            data.pop(field, None)
    return data


async def test_idle_connection_is_closed_after_the_client_timeout(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """A kept-alive connection idle for client_timeout_seconds is closed by the lane."""
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    edge = await start_edge(snapshots, server="lane", client_timeout_seconds=0.5)
    await edge.wait_version(1)
    async with connection(edge) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        async with asyncio.timeout(15):
            assert_chat(await read_answer(reader))
            assert await reader.read() == b""  # closed by the edge, with nothing more


async def test_stopping_lets_a_request_in_flight_finish(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """On stop, an idle connection closes at once and a request in flight is answered."""
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    edge = await start_edge(snapshots, server="lane", shutdown_grace_seconds=10.0)
    await edge.wait_version(1)
    async with connection(edge) as (idle_reader, idle_writer):
        idle_writer.write(post("/v1/chat/completions", CHAT_BODY))
        assert_chat(await read_answer(idle_reader))  # now kept alive, idle
        fake.hold()
        async with connection(edge) as (reader, writer):
            writer.write(post("/v1/chat/completions", CHAT_BODY))
            await writer.drain()
            await fake.wait_inflight(1)
            stopping = asyncio.create_task(edge.stop())
            async with asyncio.timeout(15):
                assert await idle_reader.read() == b""  # the idle one is closed at once
                fake.release()
                answer = await read_answer(reader)
                assert_chat(answer)
                assert answer.headers["connection"] == "close"
                await stopping
