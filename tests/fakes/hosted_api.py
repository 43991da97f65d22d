"""What the hosted APIs answer, from their published references: bodies, errors, SSE.

- OpenAI (platform.openai.com/docs/api-reference): `chat.completion` and
  `chat.completion.chunk` objects, `data: [DONE]`, a usage chunk with empty choices when
  `stream_options.include_usage`; errors `{"error": {message, type, param, code}}`; 429 with
  `x-ratelimit-*` headers and `retry-after`.
- Gemini's OpenAI compatibility (ai.google.dev/gemini-api/docs/openai): the same objects;
  errors as google.rpc.Status wrapped in a list (`[{"error": {code, message, status}}]`);
  model ids listed as `models/<id>`.
- Azure OpenAI (learn.microsoft.com/azure/ai-services/openai/reference): the same objects plus
  `prompt_filter_results` / `content_filter_results` (and a first stream chunk with empty
  choices carrying only prompt filter results); errors `{"error": {code, message}}` with
  string codes (DeploymentNotFound, "401", "429").
- Anthropic Messages (docs.anthropic.com/en/api/messages): `message` objects; named SSE events
  message_start, content_block_start, ping, content_block_delta, content_block_stop,
  message_delta, message_stop; errors `{"type": "error", "error": {type, message}}`; 529
  overloaded_error; `anthropic-ratelimit-*` headers and `retry-after`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tests.fakes.models import text_of

JSON = dict[str, Any]


def echo(name: str, body: JSON) -> str:
    """The answer text: "[<fake name>] <last user message>"."""
    messages: list[JSON] = body.get("messages") or []
    last: JSON = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return f"[{name}] {text_of(last.get('content'))}"


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]


def sse(payload: JSON | str, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


# -- OpenAI, Gemini, Azure --------------------------------------------------------------------


def _usage(prompt: int, completion: int) -> JSON:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


_FILTERS = {
    s: {"filtered": False, "severity": "safe"} for s in ("hate", "self_harm", "sexual", "violence")
}


def chat_completion(kind: str, model: str, text: str, prompt_tokens: int) -> JSON:
    answer: JSON = {
        "id": f"chatcmpl-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(prompt_tokens, len(words(text))),
        "system_fingerprint": "fp_fake",
    }
    if kind == "azure":
        answer["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _FILTERS}]
        answer["choices"][0]["content_filter_results"] = _FILTERS
    return answer


def chat_stream(kind: str, model: str, text: str, prompt_tokens: int, usage: bool) -> list[bytes]:
    base: JSON = {
        "id": f"chatcmpl-{int(time.time() * 1000)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    out: list[bytes] = []
    if kind == "azure":  # Azure opens with the prompt's filter results and no choices
        out.append(
            sse(
                {
                    **base,
                    "model": "",
                    "choices": [],
                    "prompt_filter_results": [
                        {"prompt_index": 0, "content_filter_results": _FILTERS}
                    ],
                }
            )
        )
    extra = {"usage": None} if usage else {}

    def chunk(delta: JSON, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice], **extra})

    out.append(chunk({"role": "assistant", "content": "", "refusal": None}))
    out.extend(chunk({"content": w}) for w in words(text))
    out.append(chunk({}, "stop"))
    if usage:
        out.append(sse({**base, "choices": [], "usage": _usage(prompt_tokens, len(words(text)))}))
    out.append(sse("[DONE]"))
    return out


def openai_error(status: int, message: str, kind: str, code: str | None) -> JSON:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def google_error(status: int, message: str, rpc_status: str) -> Any:
    return [{"error": {"code": status, "message": message, "status": rpc_status}}]


def azure_error(code: str, message: str) -> JSON:
    return {"error": {"code": code, "message": message}}


# -- Anthropic --------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> JSON:
    return {"type": "error", "error": {"type": kind, "message": message}}


def message(model: str, text: str, input_tokens: int) -> JSON:
    return {
        "id": f"msg_{int(time.time() * 1000)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": len(words(text)),
        },
    }


def message_stream(model: str, text: str, input_tokens: int) -> list[bytes]:
    start = message(model, "", input_tokens)
    start["content"] = []
    start["stop_reason"] = None
    start["usage"]["output_tokens"] = 1
    out = [
        sse({"type": "message_start", "message": start}, "message_start"),
        sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        sse({"type": "ping"}, "ping"),
    ]
    out.extend(
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
            "content_block_delta",
        )
        for w in words(text)
    )
    out.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    out.append(
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(words(text))},
            },
            "message_delta",
        )
    )
    out.append(sse({"type": "message_stop"}, "message_stop"))
    return out
