"""The request's own exchange wrapped for the gateway (edge/gateway/pipeline.py): its answer
recorded for the cache and redacted originals put back into it on the way to the client.

Only when there is something to do on the way: a stream to put together for the cache, or
originals to restore. A whole answer with nothing to restore goes out as the exchange made it,
and Gateway.leave takes it from the response for the cache (no wrapper, no delegated calls)."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from edge.exchange import Exchange, Failure
from edge.gateway.cache.assemble import Assembler
from edge.gateway.cache.service import Lookup
from edge.gateway.call import Call
from edge.gateway.guard.redact import Redaction, StreamRestorer
from edge.table import BackendState


class Tap(Exchange):
    """The request's own exchange, its answer recorded for the cache and restored for the
    client on the way out (either or both)."""

    __slots__ = (
        "assembler",
        "captured",
        "dialect",
        "inner",
        "redaction",
        "restorer",
        "stores",
    )

    def __init__(
        self, inner: Exchange, redaction: Redaction | None, looked: Lookup | None = None
    ) -> None:
        # Exchange's fields set here, not through super().__init__: one call fewer per miss.
        self.path = inner.path
        self.raw = inner.raw
        self.body = inner.body
        self.stream = inner.stream
        self.inner = inner
        self.method = inner.method
        self.last = b""  # unused: the inner exchange keeps its own, and ends its cut stream
        self.redaction = redaction
        # Whether its answer is recorded for the cache (the lookup says where it goes).
        self.stores = looked is not None
        self.dialect = "openai" if looked is None else looked.dialect
        self.captured: bytes | None = None  # a whole answer to store
        self.assembler: Assembler | None = None
        self.restorer: StreamRestorer | None = None
        if inner.stream:
            if looked is not None:
                self.assembler = Assembler(looked.cache.max_entry)
            if redaction is not None:
                self.restorer = StreamRestorer(redaction)

    # -- delegated -------------------------------------------------------------------------

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        return self.inner.upstream(backend, rewrite)

    def streams(self, status: int, content_type: str) -> bool:
        return self.inner.streams(status, content_type)

    def give_up(self, model: str, failure: Failure | None) -> web.Response:
        return self.inner.give_up(model, failure)

    def error(self, status: int, data: bytes) -> bytes:
        return self.inner.error(status, data)

    def error_status(self, status: int) -> int:
        return self.inner.error_status(status)

    def body_changed(self) -> None:
        self.inner.body_changed()
        self.raw = self.inner.raw

    # -- the answer on its way out ---------------------------------------------------------

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        response = self.inner.whole(status, data, headers, backend)
        if not isinstance(response, web.Response):
            return response
        body = response.body
        if not isinstance(body, bytes):
            return response
        if self.stores and status == 200 and body[:1] == b"{":
            self.captured = body
        if self.redaction is not None:
            response.body = self.redaction.restore_json(body)
        return response

    def first(self, chunk: bytes, backend: BackendState) -> bytes:
        return self._out(self.inner.first(chunk, backend))

    def chunk(self, chunk: bytes) -> bytes:
        return self._out(self.inner.chunk(chunk))

    def end(self) -> bytes:
        tail = self._out(self.inner.end())
        if self.assembler is not None:
            self.captured = self.assembler.result(self.dialect)
        if self.restorer is not None:
            tail += self.restorer.flush()
        return tail

    def cut(self, exc: BaseException) -> bytes:
        self.assembler = None  # a cut answer is never stored
        out = self.inner.cut(exc)
        if self.restorer is not None:
            out = self.restorer.flush() + out
        return out

    def _out(self, data: bytes) -> bytes:
        if self.assembler is not None:
            self.assembler.feed(data)
        if self.restorer is not None and data:
            return self.restorer.feed(data)
        return data


def wrap(call: Call, exchange: Exchange, redaction: Redaction | None) -> Exchange:
    """The exchange as it is when nothing is to be done to its answer, else in a Tap (kept
    on the request's Call until Gateway.leave)."""
    if redaction is None:
        return exchange
    tap = call.tap = Tap(exchange, redaction)
    return tap
