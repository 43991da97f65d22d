"""Streamed answers put back together for the cache, and whole answers replayed as streams."""

from __future__ import annotations

from typing import Any

import orjson

from edge.gateway.cache.assemble import Assembler
from edge.gateway.cache.replay import openai_stream


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


def test_a_stream_is_kept_whole_unless_it_carries_log_probabilities() -> None:
    """Text deltas make the whole answer; a stream with token logprobs is not kept."""
    plain = Assembler(1 << 20)
    plain.feed(sse(chunk({"role": "assistant"}), chunk({"content": "hi"}), chunk({}, "stop")))
    answer = orjson.loads(plain.result("openai") or b"null")
    assert answer["choices"][0]["message"]["content"] == "hi"
    probs = {"content": [{"token": "hi", "logprob": -0.1, "top_logprobs": []}]}
    with_probs = Assembler(1 << 20)
    with_probs.feed(sse(chunk({"content": "hi"}, logprobs=probs), chunk({}, "stop")))
    assert with_probs.result("openai") is None


def test_an_anthropic_stream_with_a_delta_it_cannot_rebuild_is_not_kept() -> None:
    """A citations delta (or any unknown delta type) leaves the answer out of the cache."""
    start = {"type": "message_start", "message": {"id": "m", "role": "assistant", "usage": {}}}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    text = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}}
    cited = {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta"}}
    end = [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
        {"type": "message_stop"},
    ]
    whole = Assembler(1 << 20)
    whole.feed(sse(start, block, text, *end))
    assert orjson.loads(whole.result("anthropic") or b"null")["content"][0]["text"] == "a"
    partial = Assembler(1 << 20)
    partial.feed(sse(start, block, text, cited, *end))
    assert partial.result("anthropic") is None


def test_a_replayed_answer_carries_its_log_probabilities() -> None:
    """A stored whole answer with logprobs replays them with its text."""
    probs = {"content": [{"token": "hi", "logprob": -0.1, "top_logprobs": []}]}
    answer = {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "logprobs": probs,
                "finish_reason": "stop",
            }
        ],
    }
    events = [
        orjson.loads(line[6:])
        for line in openai_stream(answer, False).split(b"\n\n")
        if line.startswith(b"data: {")
    ]
    carried = [
        e["choices"][0]["logprobs"] for e in events if e["choices"][0]["delta"].get("content")
    ]
    assert carried == [probs]
