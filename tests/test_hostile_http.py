"""Hostile clients at the edge's HTTP API: every attack is answered (or cut off) cleanly, and
normal OpenAI traffic keeps flowing while it lasts.

A real edge runs in front of a fake vLLM; misbehaving clients speak raw bytes over
asyncio.open_connection. Status codes: the edge answers with OpenAI's error JSON wherever a
handler runs (400/404/405/408/413), and where aiohttp's HTTP parser refuses a request before
any handler (malformed request lines, overlong lines, too many headers: edge/http_errors.py)
too: 400, 414 for a request line too long, 431 for headers too large, then the connection
closes (docs/SECURITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from edge.errors import ApiError
from edge.inbound import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, parse
from edge.routing import chat_key, completion_key
from tests.edge import conftest as edge_fixtures
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes

# The edge tests' fixtures, shared by name.
http = edge_fixtures.http
snapshots = edge_fixtures.snapshots
start_edge = edge_fixtures.start_edge

MODEL = "m"
LIMIT = 64 * 1024  # the edge's max_body_bytes in these tests
CLIENT_TIMEOUT = 1.0  # the edge's client_timeout_seconds in these tests


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (f,):
        yield f


@pytest.fixture
async def edge_(snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer) -> RunningEdge:
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    running = await start_edge(
        snapshots, max_body_bytes=LIMIT, client_timeout_seconds=CLIENT_TIMEOUT
    )
    await running.wait_version(1)
    return running


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
    """Valid JSON the edge need not understand (NULs, duplicate keys, unknown fields, deep
    but writable nesting, non-ASCII) is forwarded byte for byte and answered."""
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


# -- malformed request lines, unknown paths and methods ---------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /v1/models HTTP/9.9\r\nHost: edge\r\n\r\n",
        # Methods outside the HTTP registry are refused by the parser (not routed to a 405).
        b"FOO /v1/completions HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"BREW /coffee HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"GET /v1/models FOO/1.1\r\nHost: edge\r\n\r\n",
        b"G\x00T /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nNo-Colon-Here\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # A TLS ClientHello sent to the plain-HTTP port.
        bytes.fromhex("160301020001000200000303") + b"\x00" * 40,
    ],
)
async def test_malformed_requests_get_400(edge_: RunningEdge, data: bytes) -> None:
    """Broken request lines, headers and framing: a JSON 400 (never aiohttp's plain text),
    and the edge serves on."""
    answer = await exchange(edge_, data)
    assert_openai_error(answer, 400, "bad_http_request")
    await good_requests(edge_, 1)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/../../etc/passwd", 404),
        ("GET", "/v1/%00", 404),
        ("GET", "/v2/chat/completions", 404),
        ("POST", "/v1/chat/completions/extra", 404),
        ("PROPFIND", "/v1/models", 405),
        ("TRACE", "/v1/chat/completions", 405),
        ("PUT", "/v1/embeddings", 405),
        ("DELETE", "/v1/models/m", 405),
    ],
)
async def test_unknown_paths_and_methods(
    edge_: RunningEdge, fake: FakeServer, method: str, path: str, status: int
) -> None:
    """Unknown paths are JSON 404s, wrong or invented methods JSON 405s; nothing forwarded."""
    answer = await exchange(edge_, request(method, path))
    assert_openai_error(answer, status)
    if status == 405:
        assert answer.headers["allow"]
    assert [r for r in fake.requests if r.method == method] == []


async def test_invalid_utf8_in_path_and_headers(edge_: RunningEdge) -> None:
    """Raw non-UTF-8 bytes in the path or a header value never cost more than a 4xx."""
    answer = await exchange(edge_, b"GET /v1/models/\xff\xfe HTTP/1.1\r\nHost: edge\r\n\r\n")
    assert 400 <= answer.status < 500
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hdr"}]}'
    answer = await exchange(
        edge_,
        request("POST", "/v1/chat/completions", body, extra="X-Corral-Session: \xff\xfe\x80\r\n"),
    )
    # A session header is any bytes: it only has to hash to a key.
    assert answer.status == 200, answer.body[:200]
    await good_requests(edge_, 1)


# -- slow and idle clients --------------------------------------------------------------------


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
    """2,000 connections opened and left silent: the edge keeps serving the official client,
    then closes every idle one."""
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


# -- properties: parsing and routing keys -----------------------------------------------------

ENDPOINTS = [CHAT, COMPLETIONS, EMBEDDINGS]
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


def nested(depth: int, inner: Any) -> bytes:
    """`inner` (JSON text) wrapped in `depth` arrays."""
    return b"[" * depth + inner + b"]" * depth


def parse_and_key(raw: bytes, endpoint: Endpoint) -> None:
    """What the edge does with a body before choosing a backend; only ApiError 400 may leave."""
    try:
        body = parse(raw, endpoint)
    except ApiError as exc:
        assert exc.status in (400, 413)
        assert orjson.loads(exc.body())["error"]["message"]
        return
    if endpoint is CHAT:
        chat_key(body["model"], body["messages"])
    elif endpoint is COMPLETIONS:
        completion_key(body["model"], body["prompt"])
    orjson.dumps({**body, "model": "rewritten"})  # a model rewrite must be writable


@settings(max_examples=150, deadline=None)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    depth=st.integers(0, 1100),
    content=json_values,
    role=st.sampled_from(["user", "system", "assistant", "developer"]),
)
def test_any_nesting_parses_and_keys_or_is_400(
    endpoint: Endpoint, depth: int, content: Any, role: str
) -> None:
    """Content nested 0..1,100 deep: parsed and keyed without error, or a clean 400."""
    inner = nested(depth, json.dumps(content).encode())  # stdlib: big ints too
    field = endpoint.input_field
    value = (
        b'[{"role": "%s", "content": %s}]' % (role.encode(), inner) if endpoint is CHAT else inner
    )
    parse_and_key(b'{"model": "m", "%s": %s}' % (field.encode(), value), endpoint)


@settings(max_examples=200, deadline=None)
@given(endpoint=st.sampled_from(ENDPOINTS), model=json_values, data=json_values)
def test_any_values_parse_and_key_or_are_400(endpoint: Endpoint, model: Any, data: Any) -> None:
    """Any JSON for model and input (huge ints included): routed and keyed, or a clean 400."""
    body: dict[str, Any] = {"model": model}
    if endpoint is CHAT:
        body["messages"] = data if isinstance(data, list) else [{"role": "user", "content": data}]
    else:
        body[endpoint.input_field] = data
    parse_and_key(json.dumps(body).encode(), endpoint)  # stdlib: writes big ints too


@settings(max_examples=300, deadline=None)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    prefix=st.sampled_from([b"", b'{"model": "m", "messages": [{"role": "user", "content": "']),
    junk=st.binary(max_size=300),
)
def test_any_bytes_after_a_valid_prefix(endpoint: Endpoint, prefix: bytes, junk: bytes) -> None:
    """Random bytes (invalid UTF-8 included) after a plausible start: a 400 or a parse."""
    parse_and_key(prefix + junk, endpoint)
    parse_and_key(prefix + junk + b'"}]}', endpoint)
