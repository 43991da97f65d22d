"""A stored whole answer streamed again: OpenAI SSE chunks, or Anthropic's full event sequence.

What an SDK's stream reader needs and nothing it would not get from the real API: OpenAI
chunks with the role first, the text, tool calls, the finish reason, the usage chunk only when
the client asked for it (`stream_options.include_usage`), then `[DONE]`; Anthropic's
message_start, each block's start / deltas / stop, message_delta and message_stop.
"""

from __future__ import annotations

from typing import Any

import orjson


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(obj)


def openai_stream(answer: dict[str, Any], include_usage: bool) -> bytes:
    """Chat completion or text completion chunks for a whole answer."""
    completion = answer.get("object") == "text_completion"
    base: dict[str, Any] = {
        "id": answer.get("id", ""),
        "object": "text_completion" if completion else "chat.completion.chunk",
        "created": answer.get("created", 0),
        "model": answer.get("model", ""),
    }
    if answer.get("system_fingerprint"):
        base["system_fingerprint"] = answer["system_fingerprint"]
    out: list[bytes] = []
    for choice in answer.get("choices") or ():
        index = choice.get("index", 0)
        finish = choice.get("finish_reason")
        if completion:
            part = {"index": index, "text": choice.get("text", ""), "logprobs": None}
            first = {**part, "logprobs": choice.get("logprobs"), "finish_reason": None}
            out.append(_data({**base, "choices": [first]}))
            out.append(_data({**base, "choices": [{**part, "text": "", "finish_reason": finish}]}))
            continue
        message = choice.get("message") or {}

        def chunk(
            delta: dict[str, Any], finish_reason: Any = None, i: int = index, logprobs: Any = None
        ) -> bytes:
            part = {"index": i, "delta": delta, "logprobs": logprobs}
            return _data({**base, "choices": [{**part, "finish_reason": finish_reason}]})

        out.append(chunk({"role": message.get("role", "assistant"), "content": ""}))
        for field in ("reasoning_content", "refusal", "content"):
            if message.get(field):
                # The answer's log probabilities ride with its text, as one chunk's would.
                logprobs = choice.get("logprobs") if field == "content" else None
                out.append(chunk({field: message[field]}, logprobs=logprobs))
        for position, call in enumerate(message.get("tool_calls") or ()):
            out.append(chunk({"tool_calls": [{"index": position, **call}]}))
        out.append(chunk({}, finish))
    if include_usage and answer.get("usage") is not None:
        out.append(_data({**base, "choices": [], "usage": answer["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def anthropic_stream(message: dict[str, Any]) -> bytes:
    """Anthropic's Messages stream for a whole message."""
    usage = dict(message.get("usage") or {})
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1 if usage.get("output_tokens") else 0},
    }
    out = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message.get("content") or ()):
        kind = block.get("type")
        if kind == "text":
            opening: dict[str, Any] = {**block, "text": ""}
            deltas = [{"type": "text_delta", "text": block.get("text", "")}]
        elif kind == "tool_use":
            opening = {**block, "input": {}}
            deltas = [
                {
                    "type": "input_json_delta",
                    "partial_json": orjson.dumps(block.get("input", {})).decode(),
                }
            ]
        elif kind == "thinking":
            opening = {**block, "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")}]
            if block.get("signature"):
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:  # redacted_thinking and future kinds: whole in the start event
            opening, deltas = dict(block), []
        out.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        for delta in deltas:
            out.append(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": message.get("stop_reason"),
                    "stop_sequence": message.get("stop_sequence"),
                },
                "usage": {"output_tokens": usage.get("output_tokens", 0)},
            },
        )
    )
    out.append(_event("message_stop", {"type": "message_stop"}))
    return b"".join(out)
