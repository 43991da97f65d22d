"""The strings of a request body that can carry user data, and writing them back redacted.

One walk serves OpenAI, Anthropic and native bodies alike: every string value in the JSON,
except under keys that hold names, identifiers, enums, schemas or encoded media (a model
name, a role, a tool's JSON schema, base64 image data), which carry no prompt text and would
only cost time or raise false alarms. Encoded media is recognised by its form, not by a
prefix alone: a base64 data URL (`data:image/png;base64,...`), and `data` beside any `type`
but "text" (Anthropic's base64 and URL sources; its plain-text documents are scanned).

Anthropic thinking blocks a client sends back are scanned and redacted like any text: the
answer they came in had its placeholders restored (edge/gateway/guard/redact.py), so the
originals come back in them, and redacted again they are what the model wrote, as signed
(`signature` and `redacted_thinking`'s `data` are never touched).
"""

from __future__ import annotations

import re
from typing import Any, Final

# Keys whose values are never user text (or are binary data encoded as text).
SKIPPED_KEYS: Final = frozenset(
    (
        "model",
        "role",
        "type",
        "id",
        "tool_call_id",
        "tool_use_id",
        "media_type",
        "encoding_format",
        "format",
        "images",
        "image_url",
        "input_audio",
        "signature",
        "tools",
        "functions",
        "tool_choice",
        "response_format",
        "stop",
        "stop_sequences",
        "keep_alive",
        "options",
        "logit_bias",
        "cache_control",
        "stream_options",
    )
)

Slot = tuple[Any, Any]  # (the dict or list holding the string, its key or index)

# A data URL whose payload is base64 (RFC 2397): media, not text. Any other string that
# starts with "data:" is text ("data: name,email" is a CSV a user pasted).
_BASE64_URL: Final = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)


def _text(holder: Any, key: Any, value: str) -> bool:
    """Whether this non-empty string (not under a skipped key) is text to scan."""
    if key == "data" and not (isinstance(holder, dict) and holder.get("type") == "text"):
        return False  # Anthropic's base64 source, OpenAI's input audio, ...: encoded media
    return not (value.startswith(("data:", "DATA:", "Data:")) and _BASE64_URL.match(value))


class Texts:
    """The user-text strings of one body, in document order, and where each one lives."""

    __slots__ = ("slots", "values")

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.values: list[str] = []

    @property
    def size(self) -> int:
        return sum(map(len, self.values))

    def write(self, index: int, value: str) -> None:
        holder, key = self.slots[index]
        holder[key] = value


# Nesting beyond this is walked with a stack of its own, not by recursion (a body may nest
# as deep as the JSON parser allows, deeper than Python's recursion limit).
_RECURSE: Final = 32


def collect(body: Any) -> Texts:
    """Every user-text string of the parsed body (a dict or list), with its slot."""
    texts = Texts()
    _walk(body, texts.slots, texts.values, 0)
    return texts


def _walk(node: Any, slots: list[Slot], values: list[str], depth: int) -> None:
    """Depth-first, in document order (the common shapes nest a few levels)."""
    if depth > _RECURSE:
        _walk_deep(node, slots, values)
        return
    pairs = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in pairs:
        if isinstance(value, str):
            if value and key not in SKIPPED_KEYS and _text(node, key, value):
                slots.append((node, key))
                values.append(value)
        elif isinstance(value, (dict, list)) and key not in SKIPPED_KEYS and key != "data":
            _walk(value, slots, values, depth + 1)


def _walk_deep(body: Any, slots: list[Slot], values: list[str]) -> None:
    stack: list[Any] = [body]
    # Depth-first, children pushed in reverse so strings come out in document order.
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = [(k, v) for k, v in node.items() if k not in SKIPPED_KEYS]
            for key, value in reversed(items):
                if isinstance(value, str):
                    stack.append((node, key))
                elif isinstance(value, (dict, list)) and key != "data":
                    stack.append(value)
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                value = node[i]
                if isinstance(value, str):
                    stack.append((node, i))
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        else:  # a slot
            holder, key = node
            value = holder[key]
            if value and _text(holder, key, value):
                slots.append(node)
                values.append(value)
