"""A streaming chat backend for the streaming benchmark: N SSE chunks, a fixed gap apart.

``python -m bench.stream_backend --listen 127.0.0.1:PORT [--chunks 50] [--gap-ms 10]``
``[--first-ms 0]``

--first-ms: the time between the answer's head and its first chunk, as an engine's prefill
(0: the first chunk follows the head at once).

Each chunk is an OpenAI chat.completion.chunk carrying ``bench_sent_ns``, the
CLOCK_MONOTONIC time it was written (the same clock in every process on this machine), so a
client can tell exactly how long each chunk spent in transit, proxy included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import orjson
from aiohttp import web

from bench.aioserve import serve_until_signal

CHUNKS = web.AppKey("chunks", int)
GAP = web.AppKey("gap", float)
FIRST = web.AppKey("first", float)
MODEL = "bench-model"


def _chunk(i: int, content: str, finish: str | None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1763769600,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        "bench_seq": i,
        "bench_sent_ns": time.monotonic_ns(),
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    await request.read()
    chunks, gap, first = request.app[CHUNKS], request.app[GAP], request.app[FIRST]
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
    )
    await response.prepare(request)
    if first:
        await asyncio.sleep(first)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(chunks):
        # Produce on a fixed schedule (not sleep-after-write) so gaps do not accumulate.
        delay = start + i * gap - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await response.write(_chunk(i, "tok ", "stop" if i == chunks - 1 else None))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(listen: str, chunks: int, gap: float, first: float = 0.0) -> None:
    app = web.Application()
    app[CHUNKS] = chunks
    app[GAP] = gap
    app[FIRST] = first
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    await serve_until_signal(app, listen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--first-ms", type=float, default=0.0)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.listen, args.chunks, args.gap_ms / 1000, args.first_ms / 1000))


if __name__ == "__main__":
    main()
