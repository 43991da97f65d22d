"""OpenAI chat completion -> Anthropic Message (non-streaming), stop reasons and usage."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from edge.anthropic.errors import JSON
from edge.anthropic.validation import _is_int


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
