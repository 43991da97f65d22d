"""OpenAI chat.completion.chunk stream -> Anthropic Messages event stream (`StreamTranslator`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from edge.anthropic.errors import JSON, AnthropicError, api_error, error_from_openai
from edge.anthropic.response import (
    _matched_stop,
    _reasoning_of,
    new_message_id,
    new_tool_use_id,
    stop_reason_for,
    usage_from_openai,
)
from edge.anthropic.sse import SSEParser, sse_event
from edge.anthropic.validation import _is_int


@dataclass(slots=True)
class _Block:
    index: int
    kind: str  # "text" | "thinking" | "tool_use"
    call_id: str | None = None  # a tool call's id as the backend sent it


class StreamTranslator:
    """Turns an OpenAI chat.completion.chunk stream into Anthropic's Messages event stream.

    Feed raw upstream bytes (`feed_bytes`) or parsed chunks (`feed_chunk`); each call returns
    the Anthropic SSE bytes to send now (possibly empty). The sequence is always
    message_start, then per content block content_block_start / content_block_delta... /
    content_block_stop (one block open at a time, indices 0, 1, 2...), then message_delta
    (stop_reason, usage) and message_stop. Text becomes `text_delta`s, each OpenAI tool call
    (keyed by its `index`) a tool_use block fed by `input_json_delta` fragments, and, when the
    client asked for thinking, backend reasoning a thinking block. A fragment for a known
    index that names another call (a different id, or a name again without the same id) starts
    a new block: Ollama sends each call whole, every one with index 0. A late fragment of an
    earlier tool call (from a backend interleaving parallel calls) still goes to that call's
    block index, which the SDK's accumulator handles; no backend we know of does that.

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
            if not _another_call(block, call_id, name):
                return self._delta(block.index, _json_delta(fragment)) if fragment else b""
            del self._tools[key]  # another call takes the key over
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
        block.call_id = call_id
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


def _another_call(block: _Block, call_id: str | None, name: object) -> bool:
    """A fragment for a started call's key that is the start of another call: it carries a
    different id, or a name without the call's own id (the name comes once per call)."""
    if call_id is not None and block.call_id is not None:
        return call_id != block.call_id
    return isinstance(name, str) and bool(name)


def _json_delta(fragment: str) -> JSON:
    return {"type": "input_json_delta", "partial_json": fragment}
