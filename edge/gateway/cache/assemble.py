"""A streamed answer, as the client received it, put back together as the whole answer.

A streamed miss is stored in the same form as a non-streamed one (the JSON object the
non-streaming API returns), so either kind of request can hit it later. The assembler is fed
the bytes sent to the client and says at the end whether the answer is complete: every
choice finished (OpenAI) or `message_stop` seen (Anthropic), and no error event. Anything
else — an error event, a cut stream, an answer without its end — is never stored, nor is
an answer with parts this does not put back together (log probabilities, citations).
"""

from __future__ import annotations

from typing import Any

import orjson


class Assembler:
    """Collects SSE events; `result()` is the whole answer, or None when incomplete."""

    __slots__ = ("_pending", "broken", "events", "limit", "size")

    def __init__(self, limit: int) -> None:
        self._pending = b""
        self.events: list[dict[str, Any]] = []
        self.broken = False
        self.size = 0
        self.limit = limit  # answers bigger than this are not kept

    def feed(self, chunk: bytes) -> None:
        if self.broken or not chunk:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.broken = True
            self.events.clear()
            return
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        for line in data[:cut].split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload.startswith(b"{"):
                continue  # [DONE]
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.broken = True
                return
            if not isinstance(event, dict) or "error" in event or event.get("type") == "error":
                self.broken = True
                return
            self.events.append(event)

    def result(self, dialect: str) -> bytes | None:
        if self.broken or not self.events:
            return None
        try:
            answer = _anthropic(self.events) if dialect == "anthropic" else _openai(self.events)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return None if answer is None else orjson.dumps(answer)


def _openai(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    first = events[0]
    completion = first.get("object") == "text_completion"
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for event in events:
        if event.get("usage"):
            usage = event["usage"]
        for part in event.get("choices") or ():
            index = part.get("index", 0)
            choice = choices.setdefault(index, {"index": index, "finish_reason": None})
            if completion:
                choice["text"] = choice.get("text", "") + (part.get("text") or "")
            else:
                message = choice.setdefault("message", {"role": "assistant", "content": None})
                delta = part.get("delta") or {}
                if delta.get("role"):
                    message["role"] = delta["role"]
                for field in ("content", "reasoning_content", "refusal"):
                    if delta.get(field):
                        message[field] = (message.get(field) or "") + delta[field]
                for call in delta.get("tool_calls") or ():
                    calls = message.setdefault("tool_calls", {})
                    slot = calls.setdefault(
                        call.get("index", 0),
                        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    if call.get("id"):
                        slot["id"] = call["id"]
                    function = call.get("function") or {}
                    if function.get("name"):
                        slot["function"]["name"] += function["name"]
                    if function.get("arguments"):
                        slot["function"]["arguments"] += function["arguments"]
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
            if part.get("logprobs") is not None:
                return None  # per-token log probabilities are not put back together: not kept
            if "logprobs" in part:
                choice.setdefault("logprobs", None)
    if not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None
    for choice in choices.values():
        message = choice.get("message")
        if message is not None and "tool_calls" in message:
            message["tool_calls"] = [
                message["tool_calls"][i] for i in sorted(message["tool_calls"])
            ]
    answer: dict[str, Any] = {
        "id": first.get("id", ""),
        "object": "text_completion" if completion else "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if first.get("system_fingerprint"):
        answer["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        answer["usage"] = usage
    return answer


def _anthropic(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    partial: dict[int, str] = {}
    stopped = False
    for event in events:
        kind = event.get("type")
        if kind == "message_start":
            message = dict(event["message"])
            message["content"] = []
            message["usage"] = dict(message.get("usage") or {})
        elif message is None:
            return None
        elif kind == "content_block_start":
            block = dict(event["content_block"])
            index = event["index"]
            if block.get("type") == "tool_use":
                partial[index] = ""
            message["content"].append(block)
        elif kind == "content_block_delta":
            block = message["content"][event["index"]]
            delta = event["delta"]
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta["text"]
            elif dtype == "input_json_delta":
                partial[event["index"]] += delta["partial_json"]
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif dtype == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                return None  # a delta not put back together here (citations, ...): not kept
        elif kind == "content_block_stop":
            index = event["index"]
            if index in partial:
                text = partial.pop(index)
                message["content"][index]["input"] = orjson.loads(text) if text else {}
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            message["usage"].update(event.get("usage") or {})
        elif kind == "message_stop":
            stopped = True
    if message is None or not stopped or partial or message.get("stop_reason") is None:
        return None
    return message
