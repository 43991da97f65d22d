"""Anthropic's Messages API, translated to and from OpenAI chat completions.

Pure functions and one streaming state machine, no I/O, no imports from the rest of the edge:
the edge's `/v1/messages` route validates with `validate_messages_request`, then either forwards
the body as it is to a backend that speaks Messages natively, or sends `to_openai_request(...)`
to `/v1/chat/completions` and answers with `from_openai_response(...)` or, when streaming, with
the bytes a `StreamTranslator` makes of the upstream SSE stream.

Shapes follow Anthropic's Messages API reference and the official `anthropic` SDK's types
(`Message`, `RawMessageStreamEvent`, `ErrorResponse`); the SDK's stream accumulator is the
reference consumer (tests/edge/test_anthropic_translate.py drives it against these bytes).

What does not translate is answered with a 400 `invalid_request_error` naming the field, never
silently dropped: server tools (web search, code execution...), PDF or file-id documents, and
file-id images. Blocks an OpenAI server has no use for are dropped on purpose: `thinking` and
`redacted_thinking` in the history, `cache_control` marks, `citations`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson

JSON = dict[str, Any]

# -- errors -------------------------------------------------------------------------------------

# Anthropic's error `type` for each HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class AnthropicError(Exception):
    """A failure answered in Anthropic's shape: `{"type":"error","error":{"type","message"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for_status(status)
        self.request_id = request_id

    def payload(self) -> JSON:
        out: JSON = {"type": "error", "error": {"type": self.error_type, "message": self.message}}
        if self.request_id:
            out["request_id"] = self.request_id
        return out

    def body(self) -> bytes:
        """The JSON body of a non-streaming error response."""
        return orjson.dumps(self.payload())

    def sse(self) -> bytes:
        """The `event: error` that reports this failure inside an already started stream."""
        return sse_event("error", self.payload())


def error_type_for_status(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def invalid_request(message: str) -> AnthropicError:
    return AnthropicError(400, message, "invalid_request_error")


def authentication_error(message: str = "invalid x-api-key") -> AnthropicError:
    return AnthropicError(401, message, "authentication_error")


def not_found_error(message: str) -> AnthropicError:
    return AnthropicError(404, message, "not_found_error")


def request_too_large(message: str = "Request exceeds the maximum allowed size.") -> AnthropicError:
    return AnthropicError(413, message, "request_too_large")


def rate_limit_error(message: str = "Rate limited; retry later.") -> AnthropicError:
    return AnthropicError(429, message, "rate_limit_error")


def api_error(message: str = "Internal server error.") -> AnthropicError:
    return AnthropicError(500, message, "api_error")


def overloaded_error(message: str = "Overloaded", status: int = 529) -> AnthropicError:
    """503 or 529 (Anthropic's own "overloaded" status); both carry `overloaded_error`."""
    return AnthropicError(status, message, "overloaded_error")


def error_from_openai(status: int, body: bytes | Mapping[str, Any] | None) -> AnthropicError:
    """An OpenAI-shaped error (from a backend, or the edge's own) re-dressed for Anthropic.

    Accepts `{"error": {"message": ...}}`, vLLM's flat `{"object": "error", "message": ...}`,
    Ollama's `{"error": "text"}`, or anything else (the status alone then decides).
    """
    parsed: object = body
    if isinstance(body, bytes | bytearray):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            text = bytes(body).decode("utf-8", "replace").strip()
            return AnthropicError(status, text[:500] or f"upstream answered HTTP {status}")
    message = None
    if isinstance(parsed, Mapping):
        inner = parsed.get("error")
        if isinstance(inner, Mapping):
            message = inner.get("message")
        elif isinstance(inner, str):
            message = inner
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    if not isinstance(message, str) or not message:
        message = f"upstream answered HTTP {status}"
    return AnthropicError(status, message)


# -- validation ---------------------------------------------------------------------------------

ROLES: Final = ("user", "assistant")
TOOL_CHOICE_TYPES: Final = ("auto", "any", "tool", "none")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text_blocks(value: object, where: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise invalid_request(f"{where}: Input should be a valid string or a list of text blocks")
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid_request(f"{where}.{i}: Input should be a text block")
        if not isinstance(block.get("text"), str):
            raise invalid_request(f"{where}.{i}.text: Field required (a string)")


def _check_block(block: object, where: str) -> None:
    """The shape every content block shares, plus the fields of the types we translate."""
    if not isinstance(block, dict):
        raise invalid_request(f"{where}: Input should be an object")
    kind = block.get("type")
    if not isinstance(kind, str) or not kind:
        raise invalid_request(f"{where}.type: Field required")
    if kind == "text" and not isinstance(block.get("text"), str):
        raise invalid_request(f"{where}.text: Field required (a string)")
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict) or not isinstance(source.get("type"), str):
            raise invalid_request(f"{where}.source: Field required (an object with a type)")
        if source["type"] == "base64" and not (
            isinstance(source.get("data"), str) and isinstance(source.get("media_type"), str)
        ):
            raise invalid_request(f"{where}.source: base64 sources need media_type and data")
        if source["type"] == "url" and not isinstance(source.get("url"), str):
            raise invalid_request(f"{where}.source.url: Field required (a string)")
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise invalid_request(f"{where}: tool_use blocks need an id and a name (strings)")
        if not isinstance(block.get("input"), dict):
            raise invalid_request(f"{where}.input: Input should be an object")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise invalid_request(f"{where}.tool_use_id: Field required (a string)")
        content = block.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid_request(f"{where}.content: Input should be a string or a list of blocks")
        if isinstance(content, list):
            for j, inner in enumerate(content):
                _check_block(inner, f"{where}.content.{j}")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise invalid_request(f"{where}.is_error: Input should be a boolean")


def _validate_common(body: object) -> JSON:
    if not isinstance(body, dict):
        raise invalid_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("model: Field required (a non-empty string)")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid_request("messages: Field required (a list of messages)")
    if not messages:
        raise invalid_request("messages: at least one message is required")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise invalid_request(f"{where}: Input should be an object")
        if message.get("role") not in ROLES:
            raise invalid_request(f"{where}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise invalid_request(f"{where}.content: Input should be a string or a list of blocks")
        for j, block in enumerate(content):
            _check_block(block, f"{where}.content.{j}")
    if "system" in body and body["system"] is not None:
        _check_text_blocks(body["system"], "system")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid_request("tools: Input should be a list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise invalid_request(f"tools.{i}.name: Field required (a string)")
            if tool.get("type") in (None, "custom") and not isinstance(
                tool.get("input_schema"), dict
            ):
                raise invalid_request(f"tools.{i}.input_schema: Field required (an object)")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICE_TYPES:
            raise invalid_request(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
            )
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise invalid_request("tool_choice.name: Field required when type is 'tool'")
    return body


def validate_messages_request(body: object) -> JSON:
    """Check a parsed `POST /v1/messages` body; return it, or raise a 400 AnthropicError.

    Checks what every backend needs (a translating one and a native one alike): model,
    max_tokens > 0, non-empty messages with user/assistant roles and string-or-blocks content,
    and the types of the sampling, stop, stream, system, tools and tool_choice fields.
    """
    body = _validate_common(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid_request("max_tokens: Field required")
    if not _is_int(max_tokens) or max_tokens <= 0:
        raise invalid_request("max_tokens: Input should be an integer greater than 0")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid_request("stream: Input should be a valid boolean")
    for name, low, high in (("temperature", 0.0, 1.0), ("top_p", 0.0, 1.0)):
        value = body.get(name)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise invalid_request(f"{name}: Input should be a number between {low} and {high}")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise invalid_request("top_k: Input should be a non-negative integer")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise invalid_request("stop_sequences: Input should be a list of strings")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise invalid_request("metadata: Input should be an object")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise invalid_request("metadata.user_id: Input should be a string")
    return body


def validate_count_tokens_request(body: object) -> JSON:
    """Check a `POST /v1/messages/count_tokens` body: like a message request, no max_tokens."""
    return _validate_common(body)


# -- request: Anthropic -> OpenAI ---------------------------------------------------------------


def _system_text(system: object) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        # Separate system blocks (Claude Code sends several) stay visibly separate.
        return "\n\n".join(b["text"] for b in system if isinstance(b, dict) and b.get("text"))
    return ""


def _image_part(block: Mapping[str, Any], where: str) -> JSON:
    source = block["source"]
    if source["type"] == "base64":
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source["type"] == "url":
        url = source["url"]
    else:
        raise invalid_request(
            f"{where}.source.type: image sources of type {source['type']!r} cannot be "
            "forwarded to this backend (use base64 or url)"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: Mapping[str, Any], where: str) -> JSON:
    source = block.get("source")
    if (
        isinstance(source, dict)
        and source.get("type") == "text"
        and isinstance(source.get("data"), str)
    ):
        title = block.get("title")
        text = (
            f"{title}\n\n{source['data']}" if isinstance(title, str) and title else source["data"]
        )
        return {"type": "text", "text": text}
    raise invalid_request(f"{where}: only plain-text documents can be forwarded to this backend")


def _user_part(block: Mapping[str, Any], where: str) -> JSON | None:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return _image_part(block, where)
    if kind == "document":
        return _document_part(block, where)
    if kind in ("thinking", "redacted_thinking"):
        return None
    raise invalid_request(f"{where}.type: content blocks of type {kind!r} cannot be forwarded here")


def _parts_content(parts: list[JSON]) -> str | list[JSON]:
    """A lone text part travels as a plain string (every chat template understands that)."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _tool_result_messages(block: Mapping[str, Any], where: str) -> tuple[JSON, list[JSON]]:
    """A `tool` message, plus image parts (which tool messages cannot carry) for a user turn."""
    content = block.get("content")
    texts: list[str] = []
    images: list[JSON] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            if inner["type"] == "text":
                texts.append(inner["text"])
            elif inner["type"] == "image":
                images.append(_image_part(inner, f"{where}.content.{k}"))
            elif inner["type"] == "document":
                texts.append(_document_part(inner, f"{where}.content.{k}")["text"])
            else:
                raise invalid_request(
                    f"{where}.content.{k}.type: {inner['type']!r} cannot be forwarded here"
                )
    text = "\n".join(texts)
    if block.get("is_error"):
        # OpenAI tool messages have no error flag; the model reads it in the text instead.
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _translate_message(message: Mapping[str, Any], where: str) -> list[JSON]:
    role = message["role"]
    content = message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    where = f"{where}.content"
    if role == "assistant":
        texts: list[str] = []
        calls: list[JSON] = []
        for j, block in enumerate(content):
            kind = block["type"]
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                arguments = orjson.dumps(block["input"]).decode()
                calls.append(
                    {
                        "id": block["id"],
                        "type": "function",
                        "function": {"name": block["name"], "arguments": arguments},
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                raise invalid_request(
                    f"{where}.{j}.type: assistant blocks of type {kind!r} cannot be forwarded here"
                )
        out: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
        if calls:
            out["tool_calls"] = calls
        return [out]
    # A user turn: tool results first (OpenAI wants them right after the assistant's calls),
    # then whatever else the turn says, as one user message.
    tool_messages: list[JSON] = []
    images: list[JSON] = []  # from tool results: tool messages carry text only
    parts: list[JSON] = []
    for j, block in enumerate(content):
        if block["type"] == "tool_result":
            tool_message, result_images = _tool_result_messages(block, f"{where}.{j}")
            tool_messages.append(tool_message)
            images.extend(result_images)
        elif (part := _user_part(block, f"{where}.{j}")) is not None:
            parts.append(part)
    parts = images + parts
    if not tool_messages:
        return [{"role": "user", "content": _parts_content(parts) if parts else ""}]
    if parts:
        return [*tool_messages, {"role": "user", "content": _parts_content(parts)}]
    return tool_messages


def _translate_tools(tools: Sequence[Mapping[str, Any]]) -> list[JSON]:
    out: list[JSON] = []
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            raise invalid_request(
                f"tools.{i}.type: server tools ({tool['type']!r}) are not available on this backend"
            )
        function: JSON = {"name": tool["name"], "parameters": tool["input_schema"]}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def _translate_tool_choice(choice: Mapping[str, Any]) -> str | JSON:
    kind = choice["type"]
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return str(kind)  # "auto" and "none" mean the same in both APIs


def to_openai_request(
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    top_k: bool = True,
    max_tokens_limit: int | None = None,
) -> JSON:
    """The `/v1/chat/completions` body for a validated Messages body.

    `model` replaces the requested name (the backend's own name for an alias). `top_k` is not an
    OpenAI field; vLLM, SGLang, llama.cpp and Ollama accept it as an extra, strict
    OpenAI servers reject it: pass `top_k=False` for those and it is dropped.
    `max_tokens_limit` caps max_tokens (at least 1): Anthropic clients ask for far more than a
    small local context holds (Claude Code asks for 32,000), and vLLM refuses a request whose
    prompt plus max_tokens exceeds its context; the edge can pass the context length minus
    the estimated prompt.
    """
    messages: list[JSON] = []
    system = _system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(body["messages"]):
        messages.extend(_translate_message(message, f"messages.{i}"))
    out: JSON = {
        "model": model or body["model"],
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    if max_tokens_limit is not None:
        out["max_tokens"] = max(1, min(body["max_tokens"], max_tokens_limit))
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if top_k and body.get("top_k") is not None:
        out["top_k"] = body["top_k"]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools:
        out["tools"] = _translate_tools(tools)
        if choice is not None:
            out["tool_choice"] = _translate_tool_choice(choice)
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    return out


def conversation_head(body: Mapping[str, Any]) -> list[JSON]:
    """The system prompt and first user turn, as OpenAI-role messages, for sticky routing.

    Every turn of one conversation shares them, so a key computed from them (the edge's
    `chat_key`) sends the whole conversation to the backend that holds its KV cache.
    """
    head: list[JSON] = []
    system = _system_text(body.get("system"))
    if system:
        head.append({"role": "system", "content": system})
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "user":
            head.append({"role": "user", "content": message.get("content")})
            break
    return head


def thinking_requested(body: Mapping[str, Any]) -> bool:
    """Whether the client asked for thinking blocks (else backend reasoning is left out)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


# -- response: OpenAI -> Anthropic --------------------------------------------------------------


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def new_tool_use_id() -> str:
    return f"toolu_{secrets.token_hex(12)}"


def stop_reason_for(
    finish_reason: object,
    *,
    matched_stop: object = None,
    stop_sequences: Sequence[str] = (),
    used_tools: bool = False,
) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for an OpenAI finish_reason.

    The stop sequence that fired is only known when the backend says so: vLLM puts it in the
    choice's `stop_reason`, SGLang in `matched_stop`; other backends report a plain "stop",
    which stays `end_turn`. Tool calls win over "stop" (some Ollama versions finish tool calls
    with "stop").
    """
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    if finish_reason in ("tool_calls", "function_call") or used_tools:
        return "tool_use", None
    if isinstance(matched_stop, str) and matched_stop in stop_sequences:
        return "stop_sequence", matched_stop
    return "end_turn", None


def _matched_stop(choice: Mapping[str, Any]) -> object:
    matched = choice.get("stop_reason")
    return matched if matched is not None else choice.get("matched_stop")


def _reasoning_of(message: Mapping[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _tool_input(arguments: object) -> JSON:
    """Parsed tool arguments; a model's broken JSON is kept, never lost, under `_raw`."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    return parsed if isinstance(parsed, dict) else {"_raw": arguments}


def usage_from_openai(usage: object) -> JSON:
    """Anthropic usage for an OpenAI one; cached prompt tokens count as cache reads."""
    if not isinstance(usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    prompt = prompt if _is_int(prompt) else 0
    out: JSON = {"input_tokens": prompt, "output_tokens": completion if _is_int(completion) else 0}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if _is_int(cached) and 0 < cached <= prompt:
        out["input_tokens"] = prompt - cached
        out["cache_read_input_tokens"] = cached
    return out


def from_openai_response(
    response: Mapping[str, Any],
    *,
    model: str,
    stop_sequences: Sequence[str] = (),
    thinking: bool = False,
    message_id: str | None = None,
) -> JSON:
    """The Anthropic Message for an OpenAI `chat.completion` (its first choice).

    `model` is the name the client asked for (not the backend's name for it).
    """
    choices = response.get("choices")
    choice: Mapping[str, Any] = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    content: list[JSON] = []
    if thinking and (reasoning := _reasoning_of(message)):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        call_id = call.get("id")
        content.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else new_tool_use_id(),
                "name": str(function.get("name") or ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = stop_reason_for(
        choice.get("finish_reason"),
        matched_stop=_matched_stop(choice),
        stop_sequences=stop_sequences,
        used_tools=any(block["type"] == "tool_use" for block in content),
    )
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_from_openai(response.get("usage")),
    }


# -- streaming ----------------------------------------------------------------------------------


def sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event as Anthropic writes them: `event: <type>\\ndata: <json>\\n\\n`."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


PING: Final = sse_event("ping", {"type": "ping"})


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched server-sent event: its `event` field (None when absent) and its data."""

    event: str | None
    data: str


class SSEParser:
    """Incremental SSE parser: feed it network reads in any split, get whole events out.

    Follows the WHATWG event-stream rules that matter here: lines end in LF, CRLF or CR; a
    blank line dispatches; `data` lines join with LF; comment lines (`:`) are skipped; one
    space after the colon is dropped. Bytes are split into lines before decoding, so a UTF-8
    character cut by a read boundary is never garbled.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = False
        data = self._buffer + chunk
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop()
        if data.endswith(b"\r"):
            self._pending_cr = True
        out: list[SSEMessage] = []
        for line in lines:
            self._line(line.decode("utf-8", "replace"), out)
        return out

    def close(self) -> list[SSEMessage]:
        """The events a stream that ended without a final blank line still completes."""
        out: list[SSEMessage] = []
        if self._buffer:
            self._line(self._buffer.decode("utf-8", "replace"), out)
            self._buffer = b""
        self._line("", out)
        return out

    def _line(self, line: str, out: list[SSEMessage]) -> None:
        if not line:
            if self._data:
                out.append(SSEMessage(self._event, "\n".join(self._data)))
            self._event = None
            self._data = []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


@dataclass(slots=True)
class _Block:
    index: int
    kind: str  # "text" | "thinking" | "tool_use"


class StreamTranslator:
    """Turns an OpenAI chat.completion.chunk stream into Anthropic's Messages event stream.

    Feed raw upstream bytes (`feed_bytes`) or parsed chunks (`feed_chunk`); each call returns
    the Anthropic SSE bytes to send now (possibly empty). The sequence is always
    message_start, then per content block content_block_start / content_block_delta... /
    content_block_stop (one block open at a time, indices 0, 1, 2...), then message_delta
    (stop_reason, usage) and message_stop. Text becomes `text_delta`s, each OpenAI tool call
    (keyed by its `index`) a tool_use block fed by `input_json_delta` fragments, and, when the
    client asked for thinking, backend reasoning a thinking block. A late fragment of an earlier
    tool call (from a backend interleaving parallel calls) still goes to that call's block index,
    which the SDK's accumulator handles; no backend we know of does that.

    The closing pair is sent at the upstream `[DONE]` (after the usage-only chunk that
    `stream_options.include_usage` makes backends send), or by `finish()` when the upstream
    ends without one. If the upstream ends before any `finish_reason` (`saw_finish_reason` is
    False), it broke mid-answer: send `error(...)` instead of `finish()`. An error object inside
    the stream (vLLM sends those) becomes an `event: error` by itself and ends the stream.
    """

    def __init__(
        self,
        *,
        model: str,
        stop_sequences: Sequence[str] = (),
        input_tokens: int = 0,
        thinking: bool = False,
        message_id: str | None = None,
    ) -> None:
        self.model = model
        self.message_id = message_id or new_message_id()
        self._stop_sequences = tuple(stop_sequences)
        self._thinking = thinking
        self._parser = SSEParser()
        self._started = False
        self._done = False
        self._next_index = 0
        self._open: _Block | None = None
        self._tools: dict[object, _Block] = {}
        # Tool-call fragments that came before their name: key -> (id, argument fragments).
        self._unnamed: dict[object, tuple[str | None, list[str]]] = {}
        self._used_tools = False
        self._finish_reason: object = None
        self._matched_stop: object = None
        self._input_tokens = input_tokens
        self._usage: JSON | None = None
        self._output_chars = 0

    @property
    def started(self) -> bool:
        return self._started

    @property
    def done(self) -> bool:
        """message_stop (or an error event) has been produced; nothing more will be."""
        return self._done

    @property
    def saw_finish_reason(self) -> bool:
        return self._finish_reason is not None

    def start(self) -> bytes:
        """message_start (once; later calls return nothing). Sent lazily by the feed methods."""
        if self._started:
            return b""
        self._started = True
        message: JSON = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def feed_bytes(self, data: bytes) -> bytes:
        """Upstream SSE bytes, split anyhow; returns the Anthropic bytes they complete."""
        out = bytearray()
        for message in self._parser.feed(data):
            out += self._feed_data(message.data)
        return bytes(out)

    def feed_end(self) -> bytes:
        """The upstream body ended: flush the parser, then close if a finish_reason was seen."""
        out = bytearray()
        for message in self._parser.close():
            out += self._feed_data(message.data)
        if not self._done and self.saw_finish_reason:
            out += self.finish()
        return bytes(out)

    def _feed_data(self, data: str) -> bytes:
        if self._done:
            return b""
        if data.strip() == "[DONE]":
            return self.finish()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.error(api_error("the backend sent a malformed stream chunk"))
        if not isinstance(chunk, dict):
            return self.error(api_error("the backend sent a malformed stream chunk"))
        return self.feed_chunk(chunk)

    def feed_chunk(self, chunk: Mapping[str, Any]) -> bytes:
        """One parsed `chat.completion.chunk` (or an in-stream error object)."""
        if self._done:
            return b""
        if "error" in chunk or chunk.get("object") == "error":
            return self.error(error_from_openai(500, chunk))
        out = bytearray(self.start())
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage_from_openai(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return bytes(out)
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            if self._thinking and (reasoning := _reasoning_of(delta)):
                out += self._text_like("thinking", reasoning)
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._text_like("text", text)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, Mapping):
                        out += self._tool_fragment(position, call)
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            self._finish_reason = finish_reason
            self._matched_stop = _matched_stop(choice)
            out += self._flush_unnamed()
            out += self._close_open()
        return bytes(out)

    def finish(self) -> bytes:
        """Close any open block, then message_delta and message_stop (once)."""
        if self._done:
            return b""
        out = bytearray(self.start())
        out += self._flush_unnamed()
        out += self._close_open()
        stop_reason, stop_sequence = stop_reason_for(
            self._finish_reason,
            matched_stop=self._matched_stop,
            stop_sequences=self._stop_sequences,
            used_tools=self._used_tools,
        )
        if self._usage is not None:
            usage: JSON = dict(self._usage)
        else:
            # No usage from the backend: an estimate (chars / 4) beats a zero.
            usage = {"output_tokens": math.ceil(self._output_chars / 4)}
        out += sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": usage,
            },
        )
        out += sse_event("message_stop", {"type": "message_stop"})
        self._done = True
        return bytes(out)

    def error(self, error: AnthropicError) -> bytes:
        """An `event: error` for a failure after the stream began; it ends the stream."""
        if self._done:
            return b""
        self._done = True
        return error.sse()

    # -- blocks --

    def _begin(self, kind: str, content_block: JSON) -> tuple[_Block, bytes]:
        closing = self._close_open()
        block = _Block(self._next_index, kind)
        self._next_index += 1
        self._open = block
        event = sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": block.index, "content_block": content_block},
        )
        return block, closing + event

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        index = self._open.index
        self._open = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _text_like(self, kind: str, text: str) -> bytes:
        self._output_chars += len(text)
        out = b""
        if self._open is None or self._open.kind != kind:
            start: JSON = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            _, out = self._begin(kind, start)
        assert self._open is not None
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        return out + self._delta(self._open.index, delta)

    def _delta(self, index: int, delta: JSON) -> bytes:
        return sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def _tool_fragment(self, position: int, call: Mapping[str, Any]) -> bytes:
        raw_index = call.get("index")
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        # Tool calls are keyed by their `index`; a backend that omits it (some Ollama versions
        # send each call whole) is keyed by id, then by position in the chunk.
        key: object = raw_index if _is_int(raw_index) else (call_id or ("position", position))
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        name = function.get("name")
        arguments = function.get("arguments")
        fragment = arguments if isinstance(arguments, str) else ""
        if isinstance(arguments, Mapping):  # some servers send the parsed object
            fragment = orjson.dumps(arguments).decode()
        self._output_chars += len(fragment)
        block = self._tools.get(key)
        if block is not None:
            return self._delta(block.index, _json_delta(fragment)) if fragment else b""
        if not (isinstance(name, str) and name):
            earlier_id, fragments = self._unnamed.get(key, (None, []))
            fragments.append(fragment)
            self._unnamed[key] = (call_id or earlier_id, fragments)
            return b""
        earlier_id, fragments = self._unnamed.pop(key, (None, []))
        fragments.append(fragment)
        return self._start_tool(key, call_id or earlier_id, name, fragments)

    def _start_tool(
        self, key: object, call_id: str | None, name: str, fragments: list[str]
    ) -> bytes:
        self._used_tools = True
        start = {
            "type": "tool_use",
            "id": call_id or new_tool_use_id(),
            "name": name,
            "input": {},
        }
        block, out = self._begin("tool_use", start)
        self._tools[key] = block
        joined = "".join(fragments)
        return out + self._delta(block.index, _json_delta(joined)) if joined else out

    def _flush_unnamed(self) -> bytes:
        """Fragments whose name never came still reach the client (as a nameless call)."""
        out = bytearray()
        for key, (call_id, fragments) in list(self._unnamed.items()):
            del self._unnamed[key]
            out += self._start_tool(key, call_id, "", fragments)
        return bytes(out)


def _json_delta(fragment: str) -> JSON:
    return {"type": "input_json_delta", "partial_json": fragment}


# -- count_tokens -------------------------------------------------------------------------------

# Tokens are estimated, not counted: no backend tokenizer is at hand at the edge, and the
# models behind it each tokenize differently. The estimate is ceil(characters / 4) over the
# text a model would read (system, message text, tool calls and results as JSON, tool names,
# descriptions and schemas), plus a few tokens per message for the chat template's framing,
# plus a flat amount per image (about what Anthropic charges for a ~1 megapixel image).
CHARS_PER_TOKEN: Final = 4
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_IMAGE: Final = 1_500


def _block_chars_and_images(block: Mapping[str, Any]) -> tuple[int, int]:
    kind = block.get("type")
    if kind == "text":
        return len(block.get("text", "")), 0
    if kind == "image":
        return 0, 1
    if kind == "tool_use":
        return len(str(block.get("name", ""))) + len(orjson.dumps(block.get("input", {}))), 0
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return len(content), 0
        chars = images = 0
        for inner in content if isinstance(content, list) else ():
            if isinstance(inner, Mapping):
                c, i = _block_chars_and_images(inner)
                chars, images = chars + c, images + i
        return chars, images
    if kind == "document":
        source = block.get("source")
        data = source.get("data") if isinstance(source, Mapping) else None
        return (len(data), 0) if isinstance(data, str) else (0, 0)
    if kind == "thinking":
        return len(block.get("thinking", "")), 0
    return 0, 0


def count_tokens(body: Mapping[str, Any]) -> int:
    """An estimate of a validated request's input tokens (see the constants above)."""
    chars = len(_system_text(body.get("system")))
    images = 0
    messages: list[Mapping[str, Any]] = body.get("messages") or []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for block in content if isinstance(content, list) else ():
            c, i = _block_chars_and_images(block)
            chars, images = chars + c, images + i
    for tool in body.get("tools") or []:
        chars += len(str(tool.get("name", ""))) + len(str(tool.get("description", "")))
        chars += len(orjson.dumps(tool.get("input_schema", {})))
    return (
        math.ceil(chars / CHARS_PER_TOKEN)
        + TOKENS_PER_MESSAGE * len(messages)
        + TOKENS_PER_IMAGE * images
    )


def count_tokens_response(body: Mapping[str, Any]) -> JSON:
    """The `/v1/messages/count_tokens` answer: `{"input_tokens": N}`."""
    return {"input_tokens": count_tokens(body)}
