"""Checks of `POST /v1/messages` and `count_tokens` bodies; a bad field is a 400 naming it."""

from __future__ import annotations

from typing import Final, TypeGuard

from edge.anthropic.errors import JSON, invalid_request

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
    if not model.isprintable():  # a control character (a NUL) is no model's name
        raise invalid_request("model: must not hold control characters")
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
