"""The Exchange family: how one request goes upstream and how its answer comes back.

`Exchange` relays OpenAI requests as they are; `OpenAIExchange` renames an aliased model back
(`ModelRenamer`); the Messages and native routes subclass it (edge/messages.py,
edge/passthrough.py). `Failure` is one attempt that failed before the client saw a byte,
`Admission` an admitted request handed to `Proxy.run` (edge/proxy.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from mypy_extensions import mypyc_attr

from edge.balancer import no_backend
from edge.errors import error_body
from edge.relay import whole_response
from edge.table import BackendState, ModelRoute


class Failure:
    """One attempt that failed before anything reached the client; retryable elsewhere."""

    __slots__ = ("body", "content_type", "reason", "retry_after", "status")

    def __init__(
        self,
        reason: str,
        status: int = 0,
        body: bytes = b"",
        content_type: str = "",
        retry_after: str = "",
    ) -> None:
        self.reason = reason
        self.status = status
        self.body = body
        self.content_type = content_type
        # The backend's own Retry-After (a provider's rate limit), passed on to the client.
        self.retry_after = retry_after


# Subclassed by modules that stay Python (edge/native.py): Messages, native, hosted, tap.
@mypyc_attr(allow_interpreted_subclasses=True)
class Exchange:
    """How one request goes upstream and how its answer comes back: as it is (OpenAI).

    Subclasses change the dialect: the upstream path and body per backend, which answers
    stream, how bytes are translated on the way back, and the shape of errors.
    """

    # An attribute, not a class constant a subclass may shadow: compiled code reads the
    # attribute of this class (edge/native.py).
    __slots__ = ("body", "last", "method", "path", "raw", "stream")

    def __init__(self, path: str, raw: bytes | None, body: dict[str, Any], stream: bool) -> None:
        self.method = "POST"
        self.path = path
        self.raw = raw
        self.body = body
        self.stream = stream
        # The last chunk relayed (b"": none, or one held back whole): a cut that falls
        # mid-line ends that line before its error (stream_error).
        self.last = b""

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        """The path and body to send this backend (`rewrite`: its own name for the model)."""
        if rewrite is None:
            return self.path, self.raw
        return self.path, orjson.dumps({**self.body, "model": rewrite})

    def body_changed(self) -> None:
        """`body` was rewritten in place (guardrails redacted it): the bytes follow."""
        self.raw = orjson.dumps(self.body)

    def streams(self, status: int, content_type: str) -> bool:
        """Whether the answer is relayed chunk by chunk (else read whole, retryable)."""
        return self.stream and status == 200 and content_type.startswith("text/event-stream")

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        return whole_response(status, data, headers)

    def first(self, chunk: bytes, backend: BackendState) -> bytes:
        self.last = chunk
        return chunk

    def chunk(self, chunk: bytes) -> bytes:
        self.last = chunk
        return chunk

    def end(self) -> bytes:
        return b""

    def cut(self, exc: BaseException) -> bytes:
        """What ends a stream the backend broke mid-way."""
        return stream_error(exc, self.last)

    def error(self, status: int, data: bytes) -> bytes:
        """A failed attempt's body as give_up expects it (hosted providers rewrite theirs)."""
        return data

    def error_status(self, status: int) -> int:
        """A failed attempt's status as this client's API knows it (a translating exchange
        maps a provider's own: Anthropic's 529 overloaded is OpenAI's 503)."""
        return status

    def give_up(self, model: str, failure: Failure | None) -> web.Response:
        """The answer when every attempt failed (None: no backend could be tried)."""
        if failure is None:
            raise no_backend(model)
        if failure.status:
            headers = {"Content-Type": failure.content_type or "application/json"}
            if failure.status in (429, 503):
                headers["Retry-After"] = failure.retry_after or "1"
            return web.Response(status=failure.status, body=failure.body, headers=headers)
        if failure.reason == "timeout":
            status, message = 504, "The backend did not answer in time."
        else:
            status, message = 502, "Could not reach a backend for this model."
        return web.Response(
            status=status,
            body=error_body(message, "upstream_error", None, f"backend_{failure.reason}"),
            content_type="application/json",
            headers={"Retry-After": "1"},
        )


class OpenAIExchange(Exchange):
    """An OpenAI request: as it is, except that an answer from a backend that was sent its
    own name for an aliased model names the model the client asked for."""

    __slots__ = ("renamer",)

    def __init__(self, path: str, raw: bytes | None, body: dict[str, Any], stream: bool) -> None:
        super().__init__(path, raw, body, stream)
        self.renamer: ModelRenamer | None = None

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        if rewrite is None:
            self.renamer = None
            return self.path, self.raw
        self.renamer = ModelRenamer(self.body["model"])
        return self.path, orjson.dumps({**self.body, "model": rewrite})

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        renamer = self.renamer
        if renamer is not None and status == 200:
            data = renamer.json(data)
        return whole_response(status, data, headers)

    def first(self, chunk: bytes, backend: BackendState) -> bytes:
        return self.chunk(chunk)

    def chunk(self, chunk: bytes) -> bytes:
        renamer = self.renamer
        if renamer is None:
            self.last = chunk
            return chunk
        out = renamer.feed(chunk)
        if out:  # whole lines: an incomplete last one is held, and dropped by a cut
            self.last = out
        return out

    def end(self) -> bytes:
        renamer = self.renamer
        return b"" if renamer is None else renamer.flush()


class ModelRenamer:
    """Puts the client's model name back into answers (a JSON object, or SSE events)."""

    __slots__ = ("asked", "pending")

    def __init__(self, asked: str) -> None:
        self.asked = asked
        self.pending = b""  # the start of an SSE line whose end has not arrived yet

    def json(self, data: bytes) -> bytes:
        """A JSON object's "model" field renamed; anything else as it is."""
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(answer, dict) or "model" not in answer:
            return data
        answer["model"] = self.asked
        return orjson.dumps(answer)

    def feed(self, chunk: bytes) -> bytes:
        """Whole SSE lines renamed; an incomplete last line is held until it ends."""
        data = self.pending + chunk if self.pending else chunk
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        if not cut:
            return b""
        return b"\n".join([self._line(line) for line in data[:cut].split(b"\n")])

    def flush(self) -> bytes:
        tail, self.pending = self.pending, b""
        return self._line(tail) if tail else b""

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:"):
            return line
        cr = line.endswith(b"\r")
        payload = line[5:-1] if cr else line[5:]
        if not payload.lstrip().startswith(b"{"):
            return line  # [DONE], or not JSON
        renamed = self.json(payload)
        if renamed is payload:
            return line
        return b"data: " + renamed + (b"\r" if cr else b"")


# Made per request: not frozen (a frozen dataclass sets each field through
# object.__setattr__, about 5x the cost of a plain one).
@dataclass(slots=True, eq=False)
class Admission:
    """An admitted request: how to exchange it, how to (re)look up its route, and its sticky
    key, worked out only when it goes to a backend (a cache hit never needs one)."""

    exchange: Exchange
    route: Callable[[], ModelRoute]
    sticky: Callable[[], bytes | None]


def no_sticky_key() -> None:
    """The sticky key of a request that has none (embeddings, a body without a model)."""


def stream_error(exc: BaseException, last: bytes = b"") -> bytes:
    """The SSE event that ends a broken stream; `last`, the last chunk relayed before it: an
    event it leaves open (a line cut mid-way, or no blank line yet) is ended first, so the
    error is an event of its own."""
    kind = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
    payload: dict[str, Any] = {
        "error": {
            "message": f"The backend stream was interrupted ({kind}); the answer is incomplete.",
            "type": "upstream_error",
            "param": None,
            "code": "stream_interrupted",
        }
    }
    return sse_gap(last) + b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_gap(last: bytes) -> bytes:
    """What ends the SSE event `last` (the last bytes sent) leaves open: nothing after a
    blank line, else a line end or two (an extra blank line dispatches nothing)."""
    if not last or last.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
        return b""
    if last.endswith(b"\n"):
        return b"\n"
    if last.endswith(b"\r"):
        return b"\r\n"  # not "\n": a reader takes "\r\n" for one line end
    return b"\n\n"
