"""The lane (edge/lane/): everything unusual handed to aiohttp with the bytes that came
(unusual chat requests, CORS preflights, other routes, a GET after a lane request, malformed
requests), and answers identical to aiohttp's, streamed ones included.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.edge.conftest import RunningEdge
from tests.edge.lane.support import (
    CHAT_BODY,
    MESSAGES_BODY,
    MODEL,
    ORIGIN,
    Answer,
    assert_chat,
    connection,
    exchange,
    handed_over,
    handovers,
    in_lane,
    post,
    read_answer,
)

STREAM_BODY = orjson.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "s"}]}
)


ESCAPED_STREAM_BODY = (
    b'{"model": "m", "str\\u0065am": true, "messages": [{"role": "user", "content": "s"}]}'
)


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([post("/v1/chat/completions", CHAT_BODY, version="1.0")], id="http-1.0"),
        pytest.param([post("/v1/chat/completions", STREAM_BODY, version="1.0")], id="stream-1.0"),
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


async def test_malformed_request_gets_aiohttps_json_refusal(lane: RunningEdge) -> None:
    """A request line the parser refuses is answered by aiohttp's JSON 400."""
    (answer,) = await handed_over(lane, b"POST /v1/chat/completions HTTP/1.1 junk\r\n\r\n")
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "bad_http_request"


NO_HOST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY)
)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(NO_HOST, id="no-host"),
        pytest.param(post("/v1/chat/completions", CHAT_BODY, "Host: other\r\n"), id="two-hosts"),
        pytest.param(
            post("/v1/chat/completions", CHAT_BODY, "Content-Type: text/plain\r\n"),
            id="two-content-types",
        ),
        pytest.param(
            post("/v1/chat/completions", CHAT_BODY, "Sec-WebSocket-Key1: x\r\n"), id="ws-key1"
        ),
    ],
)
async def test_what_aiohttp_refuses_is_aiohttps_to_refuse(
    lane: RunningEdge, plain: RunningEdge, data: bytes
) -> None:
    """No Host, a repeated singleton header, Sec-WebSocket-Key1: aiohttp's 400, not a 200."""
    (ours,) = await handed_over(lane, data)
    (theirs,) = await exchange(plain, data)
    assert ours.head == theirs.head and " 400 " in ours.head


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
    _assert_same_head(ours, theirs)
    assert _stable(ours.body) == _stable(theirs.body)


def _assert_same_head(ours: Answer, theirs: Answer) -> None:
    """The same status line, and headers in the same order with the same values (but for
    those that differ per answer)."""
    assert ours.head == theirs.head
    assert [h for h in ours.headers if h not in _VARYING] == [
        h for h in theirs.headers if h not in _VARYING
    ]
    for name, value in theirs.headers.items():
        if name not in _VARYING:
            assert ours.headers[name] == value, name


def _stable(body: bytes) -> Any:
    """The body without the fields that differ per answer (ids, creation times)."""
    data = orjson.loads(body)
    if isinstance(data, dict):
        for field in ("id", "created"):
            data.pop(field, None)
    return data


MESSAGES_STREAM_BODY = MESSAGES_BODY.replace(b'"model"', b'"stream":true,"model"')


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(post("/v1/chat/completions", STREAM_BODY), id="stream"),
        pytest.param(post("/v1/chat/completions", ESCAPED_STREAM_BODY), id="escaped-stream"),
        pytest.param(
            post("/v1/chat/completions", STREAM_BODY, "Connection: close\r\n"), id="stream-close"
        ),
        pytest.param(post("/v1/messages", MESSAGES_STREAM_BODY), id="messages-stream"),
    ],
)
async def test_streams_are_served_in_the_lane_as_aiohttp_serves_them(
    lane: RunningEdge, plain: RunningEdge, data: bytes
) -> None:
    """A lane stream is aiohttp's (status, header order, chunks, events), then the next request."""
    ours = await in_lane(lane, data, *([] if b"close" in data else [data]))
    (theirs,) = await exchange(plain, data)
    for answer in ours:
        _assert_same_head(answer, theirs)
        assert answer.headers["transfer-encoding"] == "chunked"
        assert _events(answer.body) == _events(theirs.body)
        assert _events(answer.body)[-1] in ("[DONE]", {"type": "message_stop"})


def _events(body: bytes) -> list[Any]:
    """A stream's events (data lines), without the fields that differ per answer."""
    events: list[Any] = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:]
            if data == b"[DONE]":
                events.append("[DONE]")
                continue
            event = orjson.loads(data)
            for field in ("id", "created"):
                event.pop(field, None)
            if isinstance(event.get("message"), dict):
                event["message"].pop("id", None)
            events.append(event)
    return events


async def test_a_client_not_reading_stays_paused_for_aiohttp_too() -> None:
    """Handed over while its writes wait on the client: aiohttp's handler is told so."""
    from aiohttp.web_protocol import RequestHandler

    from edge.lane.protocol import LaneProtocol
    from edge.lane.server import Lane as RealLane

    class Handler(RequestHandler):
        paused = False

        def __init__(self) -> None:  # no server behind it: only told what the lane knew
            pass

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            pass

        def data_received(self, data: bytes) -> None:
            pass

        def pause_writing(self) -> None:
            self.paused = True

    class Transport(asyncio.Transport):
        protocol: asyncio.BaseProtocol | None = None
        reading = True

        def is_closing(self) -> bool:
            return False

        def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
            self.protocol = protocol

        def pause_reading(self) -> None:
            self.reading = False

        def resume_reading(self) -> None:
            self.reading = True

    class Lane(RealLane):
        client_timeout = 60.0

        def __init__(self) -> None:  # only what a connection asks of its lane
            self.connections: set[LaneProtocol] = set()
            self.handler = Handler()

        def aiohttp_handler(self) -> Handler:
            return self.handler

    lane = Lane()
    protocol = LaneProtocol(lane)
    transport = Transport()
    protocol.connection_made(transport)
    protocol.pause_writing()  # the client stopped reading its answers
    protocol.hand_over(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.protocol is lane.handler and lane.handler.paused
