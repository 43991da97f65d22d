"""What a real llama-server adds to or leaves out of OpenAI chat answers, and its prompt cache.

Checked against the real server by tests/edge/test_llamacpp_conformance.py:
- no `logprobs` key in choices unless asked; `system_fingerprint` is "b<build>-<commit>";
- `usage.prompt_tokens_details.cached_tokens` and a `timings` object (cache_n, prompt_n,
  prompt_ms, ..., predicted_per_second) on every answer; when streaming, `timings` rides on
  the finishing chunk, or on the usage-only chunk when `stream_options.include_usage` is set;
- a stream opens with `delta: {"role": "assistant", "content": null}` and its chunks carry no
  `"usage": null`.

The prompt cache: a prompt reuses what it shares with a prompt this server saw recently,
counted in whole leading messages (as a conversation's turns extend one another), never the
last token (the server always evaluates at least one).
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any

from tests.fakes.models import messages_tokens
from tests.fakes.server import FakeServer

_REMEMBERED = 8
_caches: weakref.WeakKeyDictionary[FakeServer, deque[list[Any]]] = weakref.WeakKeyDictionary()


def cached_tokens(fake: FakeServer, messages: list[Any]) -> int:
    """Tokens of the longest leading run of messages a recent prompt had; remember this one."""
    seen = _caches.setdefault(fake, deque(maxlen=_REMEMBERED))
    best = 0
    for earlier in seen:
        shared = 0
        for a, b in zip(earlier, messages, strict=False):
            if a != b:
                break
            shared += 1
        best = max(best, shared)
    seen.append(list(messages))
    if not best:
        return 0
    return min(messages_tokens(messages[:best]), messages_tokens(messages) - 1)


def timings(prompt: int, cached: int, predicted: int) -> dict[str, Any]:
    evaluated = max(prompt - cached, 0)
    prompt_ms = 0.05 * evaluated + 0.2
    predicted_ms = 0.2 * predicted + 0.1
    return {
        "cache_n": cached,
        "prompt_n": evaluated,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / max(evaluated, 1),
        "prompt_per_second": 1000.0 * evaluated / prompt_ms,
        "predicted_n": predicted,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / max(predicted, 1),
        "predicted_per_second": 1000.0 * predicted / predicted_ms,
    }


def usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "completion_tokens": completion,
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def fingerprint(fake: FakeServer) -> str:
    return f"{fake.version}-fake"


def shape_completion(fake: FakeServer, payload: dict[str, Any], cached: int) -> None:
    """A chat.completion as llama-server writes it (in place)."""
    for choice in payload["choices"]:
        choice.pop("logprobs", None)
    counts = payload["usage"]
    payload["usage"] = usage(counts["prompt_tokens"], cached, counts["completion_tokens"])
    payload["timings"] = timings(counts["prompt_tokens"], cached, counts["completion_tokens"])
    payload["system_fingerprint"] = fingerprint(fake)


def shape_chunk(
    fake: FakeServer, payload: dict[str, Any], counts: dict[str, int], cached: int
) -> None:
    """A chat.completion.chunk as llama-server writes it (in place); counts is the usage."""
    payload["system_fingerprint"] = fingerprint(fake)
    if payload.get("usage") is not None:  # the usage-only chunk
        payload["usage"] = usage(counts["prompt_tokens"], cached, counts["completion_tokens"])
        payload["timings"] = timings(counts["prompt_tokens"], cached, counts["completion_tokens"])
        return
    include_usage = "usage" in payload
    payload.pop("usage", None)
    for choice in payload["choices"]:
        choice.pop("logprobs", None)
        delta = choice["delta"]
        if delta.get("role") == "assistant" and delta.get("content") == "":
            delta["content"] = None
        if choice.get("finish_reason") and not include_usage:
            payload["timings"] = timings(
                counts["prompt_tokens"], cached, counts["completion_tokens"]
            )
