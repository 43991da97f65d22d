"""Sticky routing on real llama.cpp servers: conversations sent one turn at a time stay home."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.llamacpp import ALIAS, LlamaServer, llama_servers
from tests.test_up import corral_up

CONVERSATIONS = 9
TURNS = 5


# Agents report often and the control plane passes load on at once, so reports sampled while a
# turn ran reach the edge while the next turns are sent: the situation that made homes look busy.
FAST_REPORTS = """
controlplane:
  load_write_interval_seconds: 0.05
  snapshot_load_interval_seconds: 0.05
agent:
  probe_interval_seconds: 0.1
"""


@pytest.fixture
def three_servers(tmp_path: Path) -> Iterator[list[LlamaServer]]:
    with llama_servers(3, tmp_path) as servers:
        yield servers


def opening(conversation: int) -> list[dict[str, str]]:
    """A system prompt shared by all, and a first user turn of a few hundred bytes each."""
    words = " ".join(f"w{conversation}x{i}" for i in range(60))
    return [
        {"role": "system", "content": "You are a terse assistant. " * 8},
        {"role": "user", "content": f"conversation {conversation}: {words}"},
    ]


async def test_conversations_stay_on_one_backend_without_concurrency(
    three_servers: list[LlamaServer], tmp_path: Path
) -> None:
    """9 conversations x 5 turns, one request at a time, no session header: no spill at all."""
    config = tmp_path / "corral.yaml"
    config.write_text(FAST_REPORTS)
    args = [arg for server in three_servers for arg in ("--backend", server.url)]
    async with corral_up("--config", str(config), *args) as up, aiohttp.ClientSession() as http:
        history = {c: opening(c) for c in range(CONVERSATIONS)}
        served: dict[int, set[str]] = {c: set() for c in range(CONVERSATIONS)}
        routes: Counter[str] = Counter()
        cached_later_turns = 0
        for turn in range(TURNS):
            for c in range(CONVERSATIONS):
                body = {"model": ALIAS, "messages": history[c], "max_tokens": 300}
                async with http.post(f"{up.edge_url}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    answer = await resp.json()
                    served[c].add(resp.headers["X-Corral-Backend"])
                    routes[resp.headers["X-Corral-Route"]] += 1
                if turn:
                    cached = answer["usage"]["prompt_tokens_details"]["cached_tokens"]
                    cached_later_turns += cached > answer["usage"]["prompt_tokens"] // 2
                reply = answer["choices"][0]["message"]["content"]
                history[c] = [
                    *history[c],
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": f"turn {turn + 1} of conversation {c}"},
                ]
    assert routes == {"sticky": CONVERSATIONS * TURNS}, routes
    assert all(len(backends) == 1 for backends in served.values()), served
    # Home means warm: every later turn found most of its prompt in the server's cache.
    assert cached_later_turns == CONVERSATIONS * (TURNS - 1)
