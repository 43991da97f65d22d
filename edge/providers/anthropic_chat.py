"""OpenAI chat completions served by an Anthropic provider: the exchange for one attempt
(loaded on the first such request; the translation itself is in anthropic_out.py)."""

from __future__ import annotations

import orjson
from aiohttp import web
from multidict import CIMultiDict

from edge.errors import error_body
from edge.exchange import Exchange
from edge.providers import anthropic_out
from edge.providers.hosted import Hosted
from edge.table import BackendState


class AnthropicChat(Hosted):
    """OpenAI chat completions served by Anthropic's Messages API, translated both ways.

    The translated answer goes on through the request's own exchange (`inner`), as every
    OpenAI answer does: when the gateway wrapped it (edge/gateway/tap.py) the answer is
    recorded for the cache and redacted originals are put back."""

    __slots__ = ("asked", "translator", "usage_hidden")

    def __init__(self, inner: Exchange, usage_hidden: bool = False) -> None:
        super().__init__(inner)
        self.asked = str(inner.body.get("model", ""))
        self.translator: anthropic_out.ChatStream | None = None
        # The body asks for usage because the edge did (edge/gateway/tokens.py): the
        # tokens are read from Anthropic's own events, and the client gets no usage chunk.
        self.usage_hidden = usage_hidden

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        body = anthropic_out.to_messages(self.body, rewrite or self.asked)
        return "/v1/messages", orjson.dumps(body)

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        headers["Content-Type"] = "application/json"
        if status != 200:
            status, data = anthropic_out.error(status, data)
            return web.Response(status=status, body=data, headers=headers)
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            body = error_body("The provider sent a malformed answer.", "upstream_error", None, None)
            return web.Response(status=502, body=body, headers=headers)
        completion = anthropic_out.to_completion(message, self.asked)
        return self.inner.whole(200, orjson.dumps(completion), headers, backend)

    def first(self, chunk: bytes, backend: BackendState) -> bytes:
        options = self.body.get("stream_options")
        include = isinstance(options, dict) and options.get("include_usage") is True
        self.translator = anthropic_out.ChatStream(self.asked, include and not self.usage_hidden)
        return self.inner.first(self.translator.feed(chunk), backend)

    def chunk(self, chunk: bytes) -> bytes:
        translator = self.translator
        return self.inner.chunk(translator.feed(chunk) if translator is not None else chunk)

    def end(self) -> bytes:
        # The translator's last events go through the inner exchange before it ends.
        tail = self.translator.end() if self.translator is not None else b""
        return (self.inner.chunk(tail) if tail else b"") + self.inner.end()

    def error(self, status: int, data: bytes) -> bytes:
        return anthropic_out.error(status, data)[1]

    def error_status(self, status: int) -> int:
        return anthropic_out.openai_status(status)
