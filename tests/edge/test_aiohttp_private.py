"""The private aiohttp behaviour the edge relies on, so an aiohttp upgrade that changes it
fails here first (pyproject.toml bounds aiohttp until this passes on the new version)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict

from edge.http_errors import EdgeRunner
from edge.relay import RelayResponse, whole_response
from tests.support.net import free_port


def test_private_names_still_exist() -> None:
    """The private aiohttp names the lane's answers use still exist."""
    assert isinstance(web.StreamResponse._send_headers_immediately, bool)
    assert _serialize_headers("HTTP/1.1 200 OK", {"A": "b"}) == b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
    with pytest.raises(ValueError):
        _serialize_headers("HTTP/1.1 200 OK", {"A": "b\r\nInjected: yes"})
    # On an answer: compiled (edge/native.py), the class holds a descriptor for it.
    assert RelayResponse(status=200)._send_headers_immediately is False
    assert callable(web.AppRunner._make_server)


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (200, b'{"a":1}', {"Content-Type": "application/json", "X-Corral-Backend": "b"}),
        (404, b"", {}),
        (599, b"x" * 70000, {"X-A": "1", "x-a": "2"}),
    ],
)
def test_whole_response_is_a_web_response(
    status: int, body: bytes, headers: dict[str, str]
) -> None:
    """whole_response makes what web.Response(status, body, headers) does, keeping its multidict."""
    given = CIMultiDict(headers)
    ours = whole_response(status, body, given)
    theirs = web.Response(status=status, body=body, headers=CIMultiDict(headers))
    assert type(ours) is web.Response
    assert ours.headers is given
    assert vars(ours) == vars(theirs)
    assert (ours.status, ours.reason, ours.body) == (theirs.status, theirs.reason, theirs.body)


async def test_relay_headers_leave_with_the_first_chunk() -> None:
    """A RelayResponse sends headers with its first chunk, in one segment (no delayed-ACK wait)."""
    prepared, go = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = RelayResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        prepared.set()
        await go.wait()
        await response.write(b"data: first\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = EdgeRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await prepared.wait()
        # Headers prepared but not sent: nothing is readable while the handler waits.
        early = asyncio.ensure_future(reader.read(65536))
        done, _ = await asyncio.wait({early}, timeout=0.3)
        assert not done, early.result() if done else b""
        go.set()
        first = await asyncio.wait_for(early, 10)
        assert first.startswith(b"HTTP/1.1 200")
        assert b"data: first" in first  # in the same read as the status line and headers
        writer.close()
    finally:
        await runner.cleanup()


async def test_a_stream_prepares_with_what_the_lanes_request_gives() -> None:
    """StreamResponse.prepare, its writer and write_eof use only what edge/lane/stream.py gives."""
    # Request: method, version, keep_alive, _payload_writer, _prepare_hook; protocol: transport,
    # _paused, _drain_helper; write_eof sets _eof_sent (`ended`).
    from aiohttp.http_writer import HttpVersion11, StreamWriter

    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(bytes(data))

        def writelines(self, data: list[bytes]) -> None:
            written.extend(bytes(d) for d in data)

        def is_closing(self) -> bool:
            return False

    class Protocol:
        __slots__ = ("transport",)
        _paused = False

        def __init__(self) -> None:
            self.transport = Transport()

        async def _drain_helper(self) -> None:
            return None

    hooked: list[web.StreamResponse] = []

    class Request:
        __slots__ = ("_payload_writer",)
        method = "POST"
        version = HttpVersion11
        keep_alive = True

        def __init__(self) -> None:
            self._payload_writer = StreamWriter(Protocol(), asyncio.get_running_loop())

        async def _prepare_hook(self, response: web.StreamResponse) -> None:
            hooked.append(response)

    response = RelayResponse(headers={"Content-Type": "text/event-stream"})
    writer = await response.prepare(Request())
    assert writer is not None and hooked == [response] and not written  # the head held back
    await writer.drain()
    await response.write(b"data: 1\n\n")
    assert not response._eof_sent
    await response.write_eof()
    assert response._eof_sent and response.keep_alive
    data = b"".join(written)
    assert data.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in data
    assert data.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n")
