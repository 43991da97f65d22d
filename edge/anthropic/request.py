"""Anthropic Messages request -> OpenAI chat completions request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from edge.anthropic.errors import JSON, invalid_request


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
