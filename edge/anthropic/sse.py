"""Server-sent events as Anthropic writes them, and an incremental parser for upstream SSE."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson


def sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event as Anthropic writes them: `event: <type>\\ndata: <json>\\n\\n`."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


PING: Final = sse_event("ping", {"type": "ping"})
_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


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
    character cut by a read boundary is never garbled. Each read is scanned once and only the
    unfinished line's bytes are kept: a large event read in many pieces costs linear time.
    """

    def __init__(self) -> None:
        self._pending = bytearray()  # the start of a line no read has ended yet
        self._event: str | None = None
        self._data: list[str] = []
        self._pending_cr = False  # the last read ended in CR: an LF next is the same line end

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        if not chunk:
            return []
        start = 1 if self._pending_cr and chunk.startswith(b"\n") else 0
        self._pending_cr = False
        out: list[SSEMessage] = []
        for end in _LINE_END.finditer(chunk, start):
            if self._pending:
                self._pending += memoryview(chunk)[start : end.start()]
                line = self._pending.decode("utf-8", "replace")
                self._pending.clear()
            else:
                line = chunk[start : end.start()].decode("utf-8", "replace")
            self._line(line, out)
            start = end.end()
        if start < len(chunk):
            self._pending += memoryview(chunk)[start:]
        elif chunk.endswith(b"\r"):
            self._pending_cr = True
        return out

    def close(self) -> list[SSEMessage]:
        """The events a stream that ended without a final blank line still completes."""
        out: list[SSEMessage] = []
        if self._pending:
            self._line(self._pending.decode("utf-8", "replace"), out)
            self._pending.clear()
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
