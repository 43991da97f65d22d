"""The Python floor: a bare aiohttp + uvloop relay with no routing at all.

``python -m bench.relay --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT``

Every request goes to the one upstream over one pooled ClientSession (keep-alive, no
connection cap); the response body is streamed through as it arrives. Nothing else: no
parsing, no auth, no metrics. Whatever Corral's edge costs beyond this is the price of routing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench.aioserve import serve_until_signal

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)

# Hop-by-hop headers and the ones aiohttp sets itself.
_DROP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Content-Length",
        "Host",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Connection",
    )
)


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app[SESSION] = session
        yield


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(
        request.method, url, data=body, headers=headers, allow_redirects=False
    ) as upstream:
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP}
        response = web.StreamResponse(status=upstream.status, headers=out_headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def serve(listen: str, upstream: str) -> None:
    await serve_until_signal(build_app(upstream), listen, reuse_port=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
