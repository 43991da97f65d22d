"""Token capture from answers' bytes, hiding the usage chunk, and prices."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.gateway.call import Call
from edge.gateway.prices import Price, PriceTable, shipped
from edge.gateway.tokens import Meter, ask_usage, read_whole, usage_fields


def call(model: str = "m", served: str = "") -> Call:
    return Call("id", "rid", 0.0, 0.0, "chat", model=model, served=served)


def sse(*payloads: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4}}
STREAM = sse(
    {"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
    {"choices": [], "usage": USAGE},
)


def test_whole_answers() -> None:
    """OpenAI, Anthropic and Ollama usage in a whole answer; none: estimated."""
    c = call()
    read_whole(c, 100, orjson.dumps({"choices": [{"text": '"usage": {'}], "usage": USAGE}))
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens, c.estimated) == (12, 4, 7, False)
    anthropic = {"usage": {"input_tokens": 5, "cache_read_input_tokens": 3,
                           "cache_creation_input_tokens": 2, "output_tokens": 9}}  # fmt: skip
    read_whole(c, 100, orjson.dumps(anthropic))
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens) == (10, 3, 9)
    read_whole(c, 100, b'{"done":true,"prompt_eval_count":26,"eval_count":290}')
    assert (c.prompt_tokens, c.completion_tokens) == (26, 290)
    read_whole(c, 400, b'{"choices":[{"message":{"content":"x"}}],"usage":null}' + b" " * 40)
    assert c.estimated and c.prompt_tokens == 100


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=6))
def test_hidden_usage_chunk_whatever_the_splits(cuts: list[int]) -> None:
    """However the stream is split, the usage chunk is removed and its counts are kept."""
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    c = call()
    meter = Meter(c, 10, hide=True)
    out = meter.start(pieces[0]) + b"".join(meter.chunk(p) for p in pieces[1:]) + meter.flush()
    meter.end()
    assert b'"choices":[]' not in out and b"[DONE]" in out
    assert out.count(b"data:") == 3
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens) == (12, 4, 7)
    c = call()
    meter = Meter(c, 10, hide=False)
    out = meter.start(pieces[0]) + b"".join(meter.chunk(p) for p in pieces[1:]) + meter.flush()
    meter.end()
    assert out == STREAM and (c.prompt_tokens, c.completion_tokens) == (12, 7)


def test_stream_kept_when_asked_and_anthropic_split() -> None:
    """A client that asked keeps its usage chunk; Anthropic input and output are merged."""
    c = call()
    meter = Meter(c, 10, hide=False)
    assert meter.start(STREAM) == STREAM
    meter.end()
    assert c.completion_tokens == 7
    start = (
        b"event: message_start\n"
        b'data: {"message":{"usage":{"input_tokens":21,"output_tokens":1}}}\n\n'
    )
    delta = b'event: message_delta\ndata: {"usage":{"output_tokens":30}}\n\n'
    c = call()
    meter = Meter(c, 10, hide=False)
    meter.start(start)
    for _ in range(5):
        meter.chunk(b'event: content_block_delta\ndata: {"delta":{"text":"x"}}\n\n')
    meter.chunk(delta)
    meter.end()
    assert (c.prompt_tokens, c.completion_tokens, c.estimated) == (21, 30, False)
    c = call()
    meter = Meter(c, 10, hide=False)
    meter.start(start + delta)  # all in one chunk
    meter.end()
    assert (c.prompt_tokens, c.completion_tokens) == (21, 30)


def test_ask_usage() -> None:
    """The request asks for usage unless the client did; other stream options are kept."""
    body = {"model": "m", "stream": True}
    raw = ask_usage(orjson.dumps(body), body)
    assert raw is not None and orjson.loads(raw)["stream_options"] == {"include_usage": True}
    body = {"model": "m", "stream_options": {"continuous_usage_stats": True}}
    raw = ask_usage(orjson.dumps(body), body)
    assert raw is not None
    assert orjson.loads(raw)["stream_options"] == {
        "continuous_usage_stats": True,
        "include_usage": True,
    }
    body = {"model": "m", "stream_options": {"include_usage": True}}
    assert ask_usage(orjson.dumps(body), body) is None
    assert usage_fields(b'{"usage": null}') == {}


def test_prices() -> None:
    """Shipped prices by name, dated names and provider prefixes; unpriced models cost 0."""
    assert shipped().date and "openai" in shipped().source.lower()
    table = PriceTable.default([("llama-70b", Price(1.0, 0.5, 2.0))])
    c = call("gpt-4o-2024-08-06")
    c.prompt_tokens, c.cached_tokens, c.completion_tokens = 1_000_000, 200_000, 100_000
    assert table.cost(c) == pytest.approx(0.8 * 2.5 + 0.2 * 1.25 + 0.1 * 10.0)
    assert table.lookup("openai/gpt-4o") == table.lookup("gpt-4o")
    assert table.lookup("claude-sonnet-4-20250514") == table.lookup("claude-sonnet-4")
    c = call("alias", served="llama-70b")
    c.prompt_tokens, c.completion_tokens = 1_000_000, 1_000_000
    assert table.cost(c) == pytest.approx(3.0)
    c = call("qwen3:8b")
    c.prompt_tokens = 500
    assert table.cost(c) == 0.0
