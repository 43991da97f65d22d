"""OpenAI chat completions to Anthropic's Messages API and back, for Anthropic as a backend.

The other direction (Anthropic clients to OpenAI-speaking backends) is edge/anthropic.
Shapes follow Anthropic's Messages reference: `max_tokens` is required (the edge supplies
DEFAULT_MAX_TOKENS), system prompts go in the top-level `system` field, tool calls are
`tool_use` blocks and their results `tool_result` blocks in a user turn, and streams are
named events (message_start, content_block_start/delta/stop, message_delta, message_stop,
ping, error) that become `chat.completion.chunk` data lines ending in `[DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from edge.anthropic.sse import SSEParser
from edge.errors import ApiError, bad_request, error_body

JSON = dict[str, Any]
DEFAULT_MAX_TOKENS: Final = 4096
FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic error type -> (OpenAI error type, code).
_ERRORS: Final = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("invalid_request_error", "model_not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
}


def to_messages(body: Mapping[str, Any], model: str) -> JSON:
    """An OpenAI chat body as an Anthropic Messages body (the edge checked its top-level
    fields; the parts translated here are checked here: a wrong type is a 400 naming it)."""
    _check_parts(body)
    system: list[str] = []
    turns: list[JSON] = []
    for message in body["messages"]:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
            continue
        if role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id", "")),
                "content": _text(message.get("content")),
            }
            _append(turns, "user", [block])
        elif role == "assistant":
            blocks: list[JSON] = []
            text = _text(message.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": str(call.get("id", "")),
                        "name": str(function.get("name", "")),
                        "input": _arguments(function.get("arguments")),
                    }
                )
            if blocks:  # an empty assistant turn says nothing (Anthropic refuses empty text)
                _append(turns, "assistant", blocks)
        else:
            _append(turns, "user", _user_blocks(message.get("content")))
    out: JSON = {"model": model, "messages": turns}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
    if system:
        out["system"] = "\n\n".join(s for s in system if s)
    if isinstance(body.get("temperature"), (int, float)):
        out["temperature"] = min(float(body["temperature"]), 1.0)  # Anthropic's range is 0..1
    if isinstance(body.get("top_p"), (int, float)):
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream") is True:
        out["stream"] = True
    offered = body.get("tools") or ()
    tools = [t.get("function") or {} for t in offered if t.get("type") == "function"]
    if tools:
        out["tools"] = [
            {
                "name": t.get("name", ""),
                "description": t.get("description", ""),
                "input_schema": t.get("parameters") or {"type": "object", "properties": {}},
            }
            for t in tools
        ]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


def _check_parts(body: Mapping[str, Any]) -> None:
    """The types the translation relies on, below what edge/inbound.py checks."""
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        if not isinstance(content, (str, list, type(None))):
            raise _wrong(f"messages[{i}].content", "a string or an array")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            _check_object(part, f"messages[{i}].content[{j}]")
            if not isinstance(part.get("text", ""), str):
                raise _wrong(f"messages[{i}].content[{j}].text", "a string")
            _check_object(part.get("image_url") or {}, f"messages[{i}].content[{j}].image_url")
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _wrong(f"messages[{i}].tool_calls", "an array")
        for j, call in enumerate(calls):
            _check_object(call, f"messages[{i}].tool_calls[{j}]")
            _check_object(call.get("function") or {}, f"messages[{i}].tool_calls[{j}].function")
    for j, tool in enumerate(body.get("tools") or ()):
        _check_object(tool, f"tools[{j}]")
        _check_object(tool.get("function") or {}, f"tools[{j}].function")
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        _check_object(choice.get("function") or {}, "tool_choice.function")


def _check_object(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise _wrong(field, "an object")


def _wrong(field: str, kind: str) -> ApiError:
    return bad_request(f"'{field}' must be {kind}.", param=field)


def _append(turns: list[JSON], role: str, blocks: list[JSON]) -> None:
    """Consecutive turns of one role become one (tool results after tool_use must)."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _user_blocks(content: Any) -> list[JSON]:
    """A user turn's blocks; empty text parts left out (Anthropic refuses them), but for a
    turn with nothing else, which the provider then refuses in its own words."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[JSON] = []
    for part in content or ():
        if part.get("type") == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if url.startswith("data:") and ";base64," in url:
                media, _, data = url[5:].partition(";base64,")
                source: JSON = {"type": "base64", "media_type": media, "data": data}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
    return blocks or [{"type": "text", "text": ""}]


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError:
            return {"arguments": arguments}
    return arguments if isinstance(arguments, dict) else {}


def _tool_choice(choice: Any, parallel: Any) -> JSON | None:
    out: JSON | None = None
    if choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": str((choice.get("function") or {}).get("name", ""))}
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def usage(anthropic: Mapping[str, Any]) -> JSON:
    """Anthropic usage as OpenAI usage (cache reads and writes count as prompt tokens)."""
    prompt = sum(
        int(anthropic.get(k) or 0)
        for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    completion = int(anthropic.get("output_tokens") or 0)
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    cached = int(anthropic.get("cache_read_input_tokens") or 0)
    if cached:  # as OpenAI reports its own prompt cache's reads
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def to_completion(message: Mapping[str, Any], model: str) -> JSON:
    """An Anthropic Message as an OpenAI chat.completion naming `model`."""
    text: list[str] = []
    calls: list[JSON] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
    reply: JSON = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + str(message.get("id", "")).removeprefix("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": FINISH.get(str(message.get("stop_reason")), "stop"),
            }
        ],
        "usage": usage(message.get("usage") or {}),
    }


def error(status: int, data: bytes) -> tuple[int, bytes]:
    """An Anthropic error answer as OpenAI's error JSON, and the status an OpenAI client
    expects (529 overloaded becomes 503)."""
    try:
        doc = orjson.loads(data)
        inner = doc.get("error") if isinstance(doc, dict) else None
    except orjson.JSONDecodeError:
        inner = None
    if not isinstance(inner, dict):
        inner = {"type": "api_error", "message": data[:512].decode("utf-8", "replace")}
    kind, code = _ERRORS.get(str(inner.get("type")), ("server_error", None))
    message = str(inner.get("message") or "The provider refused the request.")
    return openai_status(status), error_body(message, kind, None, code)


def openai_status(status: int) -> int:
    """An Anthropic status as an OpenAI client expects it: 529 overloaded is 503."""
    return 503 if status == 529 else status


class ChatStream:
    """Anthropic stream events in, OpenAI chat.completion.chunk data lines out."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.parser = SSEParser()
        self.id = "chatcmpl-stream"
        self.created = int(time.time())
        self.usage: JSON = {}
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.done = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(m.event, m.data) for m in self.parser.feed(data))

    def end(self) -> bytes:
        out = b"".join(self._event(m.event, m.data) for m in self.parser.close())
        if not self.done:
            out += _data(
                {
                    "error": {
                        "message": "The provider's stream ended before the answer was complete.",
                        "type": "upstream_error",
                        "param": None,
                        "code": "stream_interrupted",
                    }
                }
            )
        return out

    def _chunk(self, delta: JSON, finish: str | None = None) -> bytes:
        return _data(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def _event(self, event: str | None, raw: str) -> bytes:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return b""
        kind = event or data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = "chatcmpl-" + str(message.get("id", "")).removeprefix("msg_")
            self.usage = dict(message.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") != "tool_use":
                return b""
            position = self.tools[data.get("index", 0)] = len(self.tools)
            call = {
                "index": position,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta":
                position = self.tools.get(data.get("index", 0), 0)
                fragment = {"arguments": delta.get("partial_json", "")}
                return self._chunk({"tool_calls": [{"index": position, "function": fragment}]})
            return b""  # thinking and signature deltas have no chat-completions field
        if kind == "message_delta":
            self.usage.update(data.get("usage") or {})
            reason = (data.get("delta") or {}).get("stop_reason")
            return self._chunk({}, FINISH.get(str(reason), "stop"))
        if kind == "message_stop":
            self.done = True
            out = b""
            if self.include_usage:
                out = _data(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage(self.usage),
                    }
                )
            return out + b"data: [DONE]\n\n"
        if kind == "error":
            self.done = True
            _, body = error(500, orjson.dumps(data))
            return b"data: " + body + b"\n\n"
        return b""  # ping


def _data(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
