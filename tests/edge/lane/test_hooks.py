"""The lane runs aiohttp's on_response_prepare hooks as aiohttp does, in the app's order: the
plain function of a hook made by response_hook called as it is, any other hook (a site's own)
awaited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from edge.client_request import ClientRequest
from edge.lane.server import Lane, Route
from edge.response_hook import response_hook
from tests.edge.lane.support import Answer, post, read_answer

HOOKED = ["x-plain", "x-site", "x-last"]


def _plain(request: ClientRequest, response: web.StreamResponse) -> None:
    response.headers["X-Plain"] = request.headers["X-Asked"]


async def _site(request: web.Request, response: web.StreamResponse) -> None:
    await asyncio.sleep(0)  # not awaited: the header would never be set
    response.headers["X-Site"] = "awaited"


def _last(request: ClientRequest, response: web.StreamResponse) -> None:
    response.headers["X-Last"] = ",".join(response.headers)


async def _answer(request: ClientRequest) -> web.StreamResponse:
    return web.Response(body=b"{}", content_type="application/json")


@contextlib.asynccontextmanager
async def _lane() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/v1/chat/completions", _answer)
    app.on_response_prepare.append(response_hook(_plain))
    app.on_response_prepare.append(_site)
    app.on_response_prepare.append(response_hook(_last))
    runner = web.AppRunner(app)
    await runner.setup()
    lane = Lane(runner, [Route("/v1/chat/completions", _answer)], max_body=1024, client_timeout=5)
    server = await lane.listen("127.0.0.1", 0, reuse_port=False, backlog=8)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await lane.shutdown(1)
        await runner.cleanup()


async def _ask(port: int, data: bytes) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(15):
            return await read_answer(reader)
    finally:
        writer.close()


async def test_lane_runs_plain_and_awaited_hooks_as_aiohttp_does() -> None:
    """The lane's answer has each hook's header, in order, as aiohttp's answer (a GET) has."""
    async with _lane() as port:
        ours = await _ask(port, post("/v1/chat/completions", b"{}", "X-Asked: lane\r\n"))
        theirs = await _ask(
            port, b"GET /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nX-Asked: lane\r\n\r\n"
        )
    for answer in (ours, theirs):
        assert answer.status == 200 and answer.body == b"{}"
        assert list(answer.headers)[-3:] == HOOKED
        assert answer.headers["x-plain"] == "lane"
        assert answer.headers["x-site"] == "awaited"
    assert ours.headers["x-last"] == theirs.headers["x-last"]
    assert ours.headers["x-last"].endswith("X-Plain,X-Site")
