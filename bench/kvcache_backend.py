"""A simulated inference server with a prefix KV cache (see bench/kvcache.py for the model).

``python -m bench.kvcache_backend --listen 127.0.0.1:P1 --listen 127.0.0.1:P2 ...``
``[--slots 4] [--capacity-blocks 1200] [--prefill-ms-per-token 0.1] [--decode-ms 60]``

One process serves several independent backends (one per --listen). Each speaks OpenAI chat
completions (streaming or not): it waits for one of its slots, looks the prompt up in its
LRU prefix cache, sleeps the prefill time of the uncached tokens, sends the first token,
sleeps the fixed decode time, sends the rest. Every answer carries ``X-Bench-Backend``,
``X-Bench-Prompt-Tokens``, ``X-Bench-Cached-Tokens`` and
``X-Bench-Ideal-Cached-Tokens`` (what one unbounded cache shared by all the process's
backends would have had); ``/metrics`` has vLLM's load gauges (``vllm:num_requests_running``,
``vllm:num_requests_waiting``) and hit/miss counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

import orjson
from aiohttp import web

from bench.kvcache import (
    REPLY_TOKENS,
    CostModel,
    IdealCache,
    PrefixCache,
    block_hashes,
    reply_words,
    tokens_of,
)

MODEL = "bench-model"


class SimBackend:
    def __init__(self, name: str, cost: CostModel, ideal: IdealCache) -> None:
        self.name = name
        self.cost = cost
        self.ideal = ideal
        self.cache = PrefixCache(cost.capacity_blocks)
        self.slots = asyncio.Semaphore(cost.slots)
        self.running = 0
        self.waiting = 0
        self.requests = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        messages = body["messages"]
        stream = bool(body.get("stream"))
        tokens = tokens_of(messages)
        hashes = block_hashes(tokens)
        reply = reply_words(tokens[-1] + str(len(tokens)), REPLY_TOKENS)
        arrived = time.monotonic()
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            return await self._serve(request, tokens, hashes, reply, stream, arrived)
        finally:
            self.running -= 1
            self.slots.release()

    async def _serve(
        self,
        request: web.Request,
        tokens: list[str],
        hashes: list[bytes],
        reply: str,
        stream: bool,
        arrived: float,
    ) -> web.StreamResponse:
        cached = min(self.cache.lookup(hashes), len(tokens))
        ideal = min(self.ideal.cached(hashes), len(tokens))
        self.requests += 1
        self.prompt_tokens += len(tokens)
        self.cached_tokens += cached
        headers = {
            "X-Bench-Backend": self.name,
            "X-Bench-Prompt-Tokens": str(len(tokens)),
            "X-Bench-Cached-Tokens": str(cached),
            "X-Bench-Ideal-Cached-Tokens": str(ideal),
            "X-Bench-Queue-Ms": f"{(time.monotonic() - arrived) * 1000:.1f}",
        }
        await asyncio.sleep(self.cost.prefill_seconds(len(tokens), cached))
        self.cache.insert(hashes)
        self.ideal.finished(hashes)
        first, _, rest = reply.partition(" ")
        full = block_hashes([*tokens, "<assistant>", *reply.split()])
        if not stream:
            await asyncio.sleep(self.cost.decode_ms / 1000)
            self.cache.insert(full)
            self.ideal.finished(full)
            return web.json_response(
                {
                    "id": "chatcmpl-kv",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(tokens),
                        "completion_tokens": REPLY_TOKENS,
                        "prompt_tokens_details": {"cached_tokens": cached},
                    },
                },
                headers=headers,
            )
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(_chunk(first + " ", None))
        await asyncio.sleep(self.cost.decode_ms / 1000)
        self.cache.insert(full)
        self.ideal.finished(full)
        await response.write(_chunk(rest, "stop") + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            f'vllm:num_requests_running{{model_name="{MODEL}"}} {self.running}\n'
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} {self.waiting}\n'
            f"bench_requests_total {self.requests}\n"
            f"bench_prompt_tokens_total {self.prompt_tokens}\n"
            f"bench_cached_tokens_total {self.cached_tokens}\n"
        )
        return web.Response(text=text)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        return app


def _chunk(content: str, finish: str | None) -> bytes:
    body = {
        "id": "chatcmpl-kv",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def serve(listens: list[str], cost: CostModel) -> None:
    runners = []
    # The upper bound: one unbounded cache that sees what every backend computes.
    ideal = IdealCache()
    for i, listen in enumerate(listens):
        host, port = listen.rsplit(":", 1)
        runner = web.AppRunner(
            SimBackend(f"kv{i}", cost, ideal).app(), access_log=None, handle_signals=False
        )
        await runner.setup()
        await web.TCPSite(runner, host, int(port), backlog=1024).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", action="append", required=True)
    d = CostModel()
    parser.add_argument("--slots", type=int, default=d.slots)
    parser.add_argument("--capacity-blocks", type=int, default=d.capacity_blocks)
    parser.add_argument("--prefill-ms-per-token", type=float, default=d.prefill_ms_per_token)
    parser.add_argument("--decode-ms", type=float, default=d.decode_ms)
    args = parser.parse_args()
    cost = CostModel(
        slots=args.slots,
        capacity_blocks=args.capacity_blocks,
        prefill_ms_per_token=args.prefill_ms_per_token,
        decode_ms=args.decode_ms,
    )
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.listen, cost))


if __name__ == "__main__":
    main()
