"""A stream's response is staged (headers prepared, held back) before its first chunk: an
attempt that fails before that chunk leaves no trace in the answer that follows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import free_port

MODEL = "m"
STREAM = orjson.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a b"}]}
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def head_then_end(request: web.Request) -> web.StreamResponse:
    """A stream's head, then the end of a body that never had a chunk."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write_eof()
    return response


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a backend answering chat completions with the handler; its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_a_stream_without_chunks_answers_a_whole_error(
    client: str,
    http: aiohttp.ClientSession,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A stream head with no chunk: a length-framed whole error answer; the connection serves on."""
    url = await serve(head_then_end)
    snapshots.publish(snapshot(1, [backend("empty", url, [MODEL])]))
    running = await start_edge(snapshots, upstream_client=client)
    await running.wait_version(1)
    for _ in range(2):  # the second on the same kept-alive connection
        async with http.post(running.url + "/v1/chat/completions", data=STREAM) as resp:
            assert resp.status >= 500
            assert "Transfer-Encoding" not in resp.headers
            assert resp.headers["Content-Type"].startswith("application/json")
            error = (await resp.json())["error"]
            assert error["type"] == "upstream_error"


async def test_a_silent_stream_is_retried_with_a_fresh_head(
    http: aiohttp.ClientSession,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A stream head with no first chunk in the TTFB is retried; the client sees only the retry."""
    release = asyncio.Event()

    async def head_then_silence(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await release.wait()
        return response

    silent = await serve(head_then_silence)
    async with running_fakes(FakeServer("vllm", [MODEL], "ok")) as (ok,):
        snapshots.publish(
            snapshot(1, [backend("silent", silent, [MODEL], priority=2), from_fake(ok)])
        )
        running = await start_edge(snapshots, first_byte_timeout_seconds=0.3)
        await running.wait_version(1)
        try:
            async with http.post(running.url + "/v1/chat/completions", data=STREAM) as resp:
                assert resp.status == 200
                assert resp.headers["X-Corral-Backend"] == "ok"
                assert resp.headers["X-Corral-Route"] == "retry"
                assert resp.headers["Transfer-Encoding"] == "chunked"
                body = await resp.read()
        finally:
            release.set()
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e.strip()]
    assert events[-1] == b"[DONE]"
    text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "[ok] a b"
