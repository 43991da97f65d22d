"""Token capture from answers' bytes, hiding the usage chunk, and prices."""

from __future__ import annotations

import itertools

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from edge.gateway.call import Call
from edge.gateway.prices import Price, PriceTable, shipped
from edge.gateway.tokens import Meter, ask_usage, generates, read_whole, usage_fields


def call(model: str = "m", served: str = "", endpoint: str = "chat") -> Call:
    return Call("id", "rid", 0.0, 0.0, endpoint, model=model, served=served)


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


def test_native_counters_of_llamacpp_and_sglang() -> None:
    """llama.cpp's tokens_* (else its timings) and SGLang's meta_info, whole and streamed."""
    c = call(endpoint="llamacpp")
    timings = {"cache_n": 2, "prompt_n": 4, "predicted_n": 3, "prompt_ms": 1.5}
    whole = {
        "content": "hi",
        "stop": True,
        "tokens_predicted": 3,
        "tokens_evaluated": 6,
        "tokens_cached": 2,
        "generation_settings": {"n_predict": 8},
        "timings": timings,
    }
    read_whole(c, 400, orjson.dumps(whole))
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens, c.estimated) == (6, 2, 3, False)
    read_whole(c, 400, orjson.dumps({"content": "hi", "timings": timings}))
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens, c.estimated) == (6, 2, 3, False)
    meter = Meter(c, 400, hide=False)
    meter.start(sse({"content": "a", "stop": False, "tokens_predicted": 1, "tokens_evaluated": 6}))
    for n in range(2, 30):
        meter.chunk(sse({"content": "a", "stop": False, "tokens_predicted": n,
                         "tokens_evaluated": 6}))  # fmt: skip
    meter.chunk(sse({"content": "", "stop": True, "tokens_predicted": 30, "tokens_evaluated": 6,
                     "tokens_cached": 5, "timings": timings}))  # fmt: skip
    meter.end()
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens, c.estimated) == (6, 5, 30, False)
    c = call(endpoint="sglang")
    meta = {"id": "x", "prompt_tokens": 7, "completion_tokens": 4, "cached_tokens": 3,
            "cached_tokens_details": {"device": 3}, "finish_reason": {"type": "stop"}}  # fmt: skip
    read_whole(c, 400, orjson.dumps({"text": "hi", "meta_info": meta}))
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens, c.estimated) == (7, 3, 4, False)
    meter = Meter(c, 400, hide=False)
    meter.start(sse({"text": "a", "meta_info": {**meta, "completion_tokens": 1}}))
    for n in range(2, 6):
        meter.chunk(sse({"text": "a" * n, "meta_info": {**meta, "completion_tokens": n}}))
    meter.end()
    assert (c.prompt_tokens, c.cached_tokens, c.completion_tokens, c.estimated) == (7, 3, 5, False)


def test_native_answers_that_generate_nothing_count_their_prompt_only() -> None:
    """Model details, embeddings, reads: no counts, no completion estimated from their size."""
    big = orjson.dumps({"model_info": {"tokenizer.ggml.tokens": [f"t{i}" for i in range(5000)]}})
    cases = [
        ("POST", "/ollama/api/show", "ollama"),
        ("POST", "/ollama/api/embeddings", "ollama"),
        ("GET", "/ollama/api/version", "ollama"),
        ("POST", "/vllm/tokenize", "vllm"),
        ("POST", "/docker-model-runner/llama.cpp/v1/embeddings", "docker-model-runner"),
    ]
    for method, path, prefix in cases:
        c = call(endpoint=prefix)
        read_whole(c, 40, big, make_mocked_request(method, path))
        assert (c.prompt_tokens, c.completion_tokens, c.estimated) == (10, 0, True), path
        assert not generates(prefix, method, path)
    c = call(endpoint="ollama")
    read_whole(c, 40, b'{"embeddings":[[0.5]],"prompt_eval_count":3}' + b" " * 400,
               make_mocked_request("POST", "/ollama/api/embed"))  # fmt: skip
    assert (c.prompt_tokens, c.completion_tokens, c.estimated) == (3, 0, False)
    for method, path, prefix in [
        ("POST", "/ollama/api/generate", "ollama"),
        ("POST", "/llamacpp/completion", "llamacpp"),
        ("POST", "/docker-model-runner/llama.cpp/v1/chat/completions", "docker-model-runner"),
    ]:
        c = call(endpoint=prefix)
        read_whole(c, 40, big, make_mocked_request(method, path))
        assert c.completion_tokens == len(big) // 4 and c.estimated, path
        assert generates(prefix, method, path)
    c = call()  # an OpenAI answer without usage: its size, as always
    read_whole(c, 40, big, make_mocked_request("POST", "/v1/chat/completions"))
    assert c.completion_tokens == len(big) // 4


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
