"""`/v1/messages/count_tokens`: an estimate of a request's input tokens."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import orjson

from edge.anthropic.errors import JSON
from edge.anthropic.request import _system_text

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
