"""Typed placeholders in, originals back out: `<EMAIL_1>` for the first e-mail of a request.

A `Redaction` belongs to one request: it numbers placeholders per kind (the same value gets
the same placeholder, so the model can still tell two addresses apart) and remembers the
originals, in memory only, for putting them back into that request's answer. `restore_json`
does that for a whole answer; `StreamRestorer` for an answer streamed as SSE or NDJSON, where
a placeholder can arrive split over two events (`<EMA` then `IL_1>`): the possible start of a
placeholder at the end of a text delta is held back and sent with the next delta of the same
text (or just before that text ends).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import orjson

from edge.gateway.guard.detectors import Finding

# A kind is ASCII letters, digits and underscores, led by a letter (hooks name their own).
PLACEHOLDER: Final = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d{1,6})>")
# The end of a text that may be the first part of a placeholder (held back in streams).
_PARTIAL: Final = re.compile(r"<(?:[A-Z][A-Z0-9_]*)?\Z")
# Fields of streamed events that carry the answer's text (OpenAI, Anthropic, Ollama, native).
TEXT_KEYS: Final = frozenset(
    ("content", "text", "reasoning_content", "reasoning", "thinking", "response")
)
# Fields holding JSON as text (tool arguments): originals go in JSON-escaped.
JSON_TEXT_KEYS: Final = frozenset(("arguments", "partial_json"))


class Redaction:
    """The placeholders of one request and the originals they stand for."""

    __slots__ = ("_numbers", "_of_value", "originals")

    def __init__(self) -> None:
        self.originals: dict[str, str] = {}
        self._of_value: dict[tuple[str, str], str] = {}
        self._numbers: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.originals)

    def placeholder(self, kind: str, value: str) -> str:
        known = self._of_value.get((kind, value))
        if known is not None:
            return known
        n = self._numbers.get(kind, 0) + 1
        self._numbers[kind] = n
        name = f"<{kind.upper()}_{n}>"
        self._of_value[(kind, value)] = name
        self.originals[name] = value
        return name

    def redact(self, text: str, findings: Iterable[Finding]) -> str:
        """The text with each finding (sorted, not overlapping) replaced by its placeholder."""
        out: list[str] = []
        at = 0
        for f in findings:
            out.append(text[at : f.start])
            out.append(self.placeholder(f.kind, text[f.start : f.end]))
            at = f.end
        out.append(text[at:])
        return "".join(out)

    def restore(self, text: str, *, json_text: bool = False) -> str:
        """Placeholders of this request replaced by their originals (others left alone)."""
        if "<" not in text:
            return text
        originals = self.originals

        def back(m: re.Match[str]) -> str:
            original = originals.get(m.group())
            if original is None:
                return m.group()
            return orjson.dumps(original).decode()[1:-1] if json_text else original

        return PLACEHOLDER.sub(back, text)

    def restore_json(self, data: bytes) -> bytes:
        """A JSON answer with the originals back in every string; other bytes as they are."""
        if b"<" not in data and b"\\u003c" not in data:
            return data
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        return orjson.dumps(self._restore_value(answer, ""))

    def _restore_value(self, value: Any, key: str) -> Any:
        if isinstance(value, str):
            return self.restore(value, json_text=key in JSON_TEXT_KEYS)
        if isinstance(value, dict):
            return {k: self._restore_value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._restore_value(v, key) for v in value]
        return value


class StreamRestorer:
    """Restores placeholders in a streamed answer, event by event, across chunk borders."""

    __slots__ = ("_held", "_model", "_ndjson", "_pending", "redaction")

    def __init__(self, redaction: Redaction) -> None:
        self.redaction = redaction
        self._pending = b""  # bytes of an event (or NDJSON line) not complete yet
        self._held: dict[tuple[Any, ...], str] = {}  # per text: a possible placeholder start
        # An NDJSON stream (Ollama's) once a line of one is seen, and the model its lines name:
        # held text it ends with goes out in a line of its shape.
        self._ndjson = False
        self._model: object = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        out: list[bytes] = []
        at = 0
        while True:
            end, sep = _next_boundary(data, at)
            if end < 0:
                break
            out.append(self._event(data[at:end]) + sep)
            at = end + len(sep)
        self._pending = data[at:]
        return b"".join(out)

    def flush(self) -> bytes:
        tail, self._pending = self._pending, b""
        out = self._event(tail) if tail.strip() else tail
        held = self._release_all()
        if held and self._ndjson and out and not out.endswith(b"\n"):
            out += b"\n"  # a last line without its end: the held text on a line of its own
        return out + held

    # -- one event -----------------------------------------------------------------------

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        for i, line in enumerate(lines):
            stripped = line.rstrip(b"\r")
            if stripped.startswith(b"data:"):
                payload = stripped[5:].strip()
                prefix = b"data: "
            elif stripped.startswith(b"{"):
                payload, prefix = stripped, b""  # NDJSON (Ollama)
                self._ndjson = True
            else:
                continue
            if payload == b"[DONE]":
                return self._release_all() + event
            if not payload.startswith(b"{"):
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if not prefix:
                model = obj.get("model")
                if model is not None:
                    self._model = model
            before = self._closing(obj)
            self._walk(obj, (obj.get("index"),), "")
            cr = b"\r" if line.endswith(b"\r") else b""
            lines[i] = prefix + orjson.dumps(obj) + cr
            return before + b"\n".join(lines)
        return event

    def _walk(self, node: Any, channel: tuple[Any, ...], key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str):
                    if k in TEXT_KEYS or k in JSON_TEXT_KEYS:
                        node[k] = self._text((*channel, k), v, json_text=k in JSON_TEXT_KEYS)
                elif isinstance(v, (dict, list)):
                    if self._ndjson and k == "tool_calls":
                        # Ollama's come whole in one line, arguments an object: every string
                        # restored, as in restore_json (nothing held).
                        node[k] = self.redaction._restore_value(v, k)
                    else:
                        self._walk(v, (*channel, k), k)
            self._finished(node, channel)
        elif isinstance(node, list):
            for pos, v in enumerate(node):
                if isinstance(v, (dict, list)):
                    index = v.get("index", pos) if isinstance(v, dict) else pos
                    self._walk(v, (*channel, index), key)

    def _text(self, channel: tuple[Any, ...], text: str, *, json_text: bool) -> str:
        held = self._held.pop(channel, "")
        if held:
            text = held + text
        m = _PARTIAL.search(text)
        if m is not None:
            self._held[channel] = text[m.start() :]
            text = text[: m.start()]
        return self.redaction.restore(text, json_text=json_text)

    def _finished(self, node: dict[str, Any], channel: tuple[Any, ...]) -> None:
        """An OpenAI choice or an Ollama message that ends: its held text goes out in it."""
        if not (node.get("finish_reason") or node.get("done") is True):
            return
        self._release_into(node, channel)
        for target_key in ("delta", "message"):
            target = node.get(target_key)
            if isinstance(target, dict):
                self._release_into(target, (*channel, target_key))

    def _release_into(self, target: dict[str, Any], prefix: tuple[Any, ...]) -> None:
        for channel in [c for c in self._held if c[:-1] == prefix]:
            key = channel[-1]
            held = self._held.pop(channel)
            existing = target.get(key)
            target[key] = (existing if isinstance(existing, str) else "") + self.redaction.restore(
                held, json_text=key in JSON_TEXT_KEYS
            )

    def _closing(self, obj: dict[str, Any]) -> bytes:
        """Before Anthropic's content_block_stop: a delta event with the block's held text."""
        if obj.get("type") != "content_block_stop":
            return b""
        index = obj.get("index")
        out = b""
        for channel in [c for c in self._held if c[0] == index]:
            key = channel[-1]
            held = self._held.pop(channel)
            kind = {"text": "text_delta", "thinking": "thinking_delta"}.get(key, "input_json_delta")
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {
                    "type": kind,
                    key: self.redaction.restore(held, json_text=key in JSON_TEXT_KEYS),
                },
            }
            out += b"event: content_block_delta\ndata: " + orjson.dumps(delta) + b"\n\n"
        return out

    def _release_all(self) -> bytes:
        """Text still held when the stream ends (it never became a placeholder): as it is."""
        if not self._held:
            return b""
        if self._ndjson:
            return self._release_line()
        held = "".join(self._held.values())
        self._held.clear()
        # No event to put it in: an OpenAI-style chunk carrying the rest of the text.
        chunk = {"choices": [{"index": 0, "delta": {"content": held}, "finish_reason": None}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _release_line(self) -> bytes:
        """Held text as an Ollama line that is not the last (`done` false): a chat's in its
        message (`content`, `thinking`), a generation's at the top (`response`, `thinking`)."""
        line: dict[str, Any] = {} if self._model is None else {"model": self._model}
        message: dict[str, Any] | None = None
        for channel, held in self._held.items():
            key = channel[-1]
            if len(channel) == 3 and channel[1] == "message":
                if message is None:
                    message = {"role": "assistant", "content": ""}
                target = message
            else:
                target = line
            existing = target.get(key)
            target[key] = (existing if isinstance(existing, str) else "") + held
        self._held.clear()
        if message is not None:
            line["message"] = message
        elif "response" not in line:
            line["response"] = ""
        line["done"] = False
        return orjson.dumps(line) + b"\n"


def _next_boundary(data: bytes, at: int) -> tuple[int, bytes]:
    """Where the next complete event ends: a blank line (SSE) or a JSON line (NDJSON)."""
    if data.startswith(b"{", at):
        end = data.find(b"\n", at)
        return end, b"\n"
    best = -1
    sep = b""
    for candidate in (b"\n\n", b"\r\n\r\n"):
        i = data.find(candidate, at)
        if i >= 0 and (best < 0 or i < best):
            best, sep = i, candidate
    return best, sep
