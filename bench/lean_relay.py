"""The lean floor: the least work an aiohttp + uvloop proxy can do per request.

``python -m bench.lean_relay --listen 127.0.0.1:PORT --upstream URL [--upstream URL ...]``

Per request: read the whole body, POST it to the next upstream (round-robin) over one pooled
ClientSession carrying only ``Content-Type``, and answer with a ``web.Response`` holding the
whole body and the upstream's content type. Event streams are the one exception: they go out
chunk by chunk through a ``StreamResponse``. No headers are copied either way, nothing is
parsed, nothing is routed. It is a calibration point for the edge's hot path, not a proxy
anyone should run (issue 18: the edge is measured against this).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator

import aiohttp
from aiohttp import web

from bench.aioserve import serve_until_signal

SESSION = web.AppKey("session", aiohttp.ClientSession)
NEXT: web.AppKey[Iterator[str]] = web.AppKey("next")
_SENT = {"Content-Type": "application/json"}


async def _pool(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app[SESSION] = session
        yield


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    backends: Iterator[str] = request.app[NEXT]
    url = next(backends) + request.path
    async with request.app[SESSION].post(url, data=body, headers=_SENT) as upstream:
        kind = upstream.headers.get("Content-Type", "")
        if "event-stream" not in kind:
            data = await upstream.read()
            return web.Response(body=data, status=upstream.status, headers={"Content-Type": kind})
        out = web.StreamResponse(status=upstream.status, headers={"Content-Type": kind})
        await out.prepare(request)
        async for piece in upstream.content.iter_any():
            await out.write(piece)
        await out.write_eof()
        return out


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(upstreams: list[str]) -> web.Application:
    app = web.Application()
    app[NEXT] = itertools.cycle([u.rstrip("/") for u in upstreams])
    app.cleanup_ctx.append(_pool)
    app.router.add_get("/health", health)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", action="append", required=True)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve_until_signal(build_app(args.upstream), args.listen, reuse_port=True))


if __name__ == "__main__":
    main()
