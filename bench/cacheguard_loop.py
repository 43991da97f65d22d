"""The cache's and the guard's no-hit path in a loop, for bench/cacheguard.py: their own cost
per request, without an edge's sockets, event loop wake-ups or cold caches around them.

Each request is what the edge does for it beside its relay: the body parsed, a Call and an
Exchange made, `Gateway.enter` (guard, then cache lookup: a miss), the answer as a
web.Response, `Gateway.leave` (the answer stored) and the cache-header hook. Every request has
a body of its own and an answer of its own (new bytes, as read from a socket: a stored answer
is kept, not freed for the next one to reuse), and the in-process tier is full (64 MiB, the
default) before the timed runs, as in an edge that has served a while; one configuration
keeps nothing (a 0-byte tier: the cache's work without the store). The loop without cache and
guard is the baseline; each configuration's figure is what it adds to it, in CPU time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from statistics import median
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from corral.config import EdgeConfig
from corral.config_gateway import CacheConfig, GuardConfig
from edge.exchange import OpenAIExchange
from edge.gateway.call import CALL, Call
from edge.gateway.lifetimes import running
from edge.gateway.pipeline import Gateway, put_cache_header
from edge.relay import whole_response
from edge.table import ModelRoute

MODEL = "bench-model"
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "y" * 300}}],
    }
)
# The row of the loop without cache and guard: its own µs per request, not an addition.
BASELINE = "neither (the loop's own µs)"
# The cache with an in-process tier of 0 bytes: key, lookup and bookkeeping, nothing stored.
NOTHING_KEPT = "cache, nothing kept"
FILL = 150_000  # requests before timing: a 64 MiB tier is full after ~110,000 short answers
RUN = 20_000


class _Request(dict[Any, Any]):
    """What the gateway reads of a request: its headers and its per-request state."""

    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


# A real route (no alias, no backends: the loop never goes upstream): compiled, the gateway
# checks the types it is handed (edge/native.py).
_ROUTE = ModelRoute(MODEL, (), ())


def _route() -> ModelRoute:
    return _ROUTE


def _config(cache: bool, guard: bool, kept: bool = True) -> EdgeConfig:
    tier = CacheConfig().max_bytes if kept else 0
    return dataclasses.replace(
        EdgeConfig(),
        cache=CacheConfig(ttl_seconds=600.0 if cache else 0.0, max_bytes=tier),
        guard=GuardConfig(pii="redact", restore=True) if guard else GuardConfig(),
    )


async def _per_request(prompt: str, cache: bool, guard: bool, kept: bool = True) -> float:
    """CPU seconds per request of the loop with this configuration (median of 5 runs)."""
    counter = itertools.count()
    async with (
        aiohttp.ClientSession() as session,
        running(_config(cache, guard, kept), None, lambda: session) as gateway,
    ):

        def one() -> None:
            raw = orjson.dumps(
                {
                    "model": MODEL,
                    "max_tokens": 32,
                    "messages": [{"role": "user", "content": f"req-{next(counter)} {prompt}"}],
                }
            )
            body = orjson.loads(raw)
            request = _Request()
            call = Call("id", "id", 0.0, 0.0, "chat")
            call.model = MODEL
            request[CALL] = call
            exchange = OpenAIExchange("/v1/chat/completions", raw, body, False)
            _enter(gateway, request, call, exchange)
            answer = ANSWER[:-1] + b"}"  # new bytes, as the upstream read gives
            response = whole_response(200, answer, CIMultiDict())
            call.status = 200
            gateway.leave(call, response)
            put_cache_header(request, response)  # type: ignore[arg-type]

        for _ in range(FILL if cache else RUN):
            one()
        runs = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(RUN):
                one()
            runs.append((time.process_time() - started) / RUN)
        return median(runs)


def _enter(gateway: Gateway, request: _Request, call: Call, exchange: OpenAIExchange) -> None:
    entered = gateway.enter(request, call, exchange, _route, "chat")  # type: ignore[arg-type]
    if not isinstance(entered, OpenAIExchange):  # a hit or a wait: never, every body is new
        raise RuntimeError(f"expected a miss, got {type(entered).__name__}")


def loop_costs(prompts: dict[str, str]) -> list[tuple[str, str, float]]:
    """(prompt, configuration, µs per request added to the loop without cache and guard)."""
    out = []
    for label, prompt in prompts.items():
        base = asyncio.run(_per_request(prompt, cache=False, guard=False))
        for name, cache, guard, kept in (
            ("cache", True, False, True),
            (NOTHING_KEPT, True, False, False),
            ("guard", False, True, True),
            ("both", True, True, True),
        ):
            cost = asyncio.run(_per_request(prompt, cache=cache, guard=guard, kept=kept))
            out.append((label, name, (cost - base) * 1e6))
        out.append((label, BASELINE, base * 1e6))
    return out
