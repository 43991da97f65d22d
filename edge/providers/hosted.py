"""Every hosted-provider quirk at one boundary: the exchange for one attempt on a provider.

`adapt(exchange, backend)` is the request's own exchange for a local server, and for a hosted
provider a wrapper that fixes what differs: the URL layout (OpenAI-style bases end in /v1;
Azure's /openai/deployments/<deployment>/...?api-version=), Anthropic's native Messages API
for chat completions (edge/providers/anthropic_out.py), and error bodies in the client's
dialect (Gemini's Google-style errors, Anthropic's) with the status an OpenAI client expects.
Retry-After on a 429 or 503 keeps the backend out of this edge's routing for that long.

Each provider gets its own connection pool (aiohttp session), verified TLS, the edge's
timeouts and retry policy (the attempt loop is the same as for local servers).
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from corral.config import EdgeConfig
from corral.v1 import providers_pb2
from edge.errors import ApiError, error_body
from edge.exchange import Exchange, Failure
from edge.inbound import CHAT, MESSAGES_PATH
from edge.providers.upstream import tls_context
from edge.table import BackendState

ANTHROPIC: Final = providers_pb2.PROVIDER_TYPE_ANTHROPIC
AZURE: Final = providers_pb2.PROVIDER_TYPE_AZURE
GEMINI: Final = providers_pb2.PROVIDER_TYPE_GEMINI
_CHAT: Final = CHAT.path
# Longest a Retry-After may keep a provider out (a bogus header must not exile it).
MAX_RETRY_AFTER: Final = 300.0
# The provider refused the gateway's own credential: OpenAI's message then quotes part of
# it ("Incorrect API key provided: sk-***abcd"), which is not the client's to see.
REFUSED: Final = frozenset((401, 403))


def adapt(exchange: Exchange, backend: BackendState, usage_hidden: bool = False) -> Exchange:
    """The exchange for one attempt on `backend` (itself for a local server). `usage_hidden`:
    the edge, not the client, asked for a streamed usage chunk (the client gets none)."""
    if not backend.provider:
        return exchange
    if backend.provider == ANTHROPIC:
        if exchange.path == MESSAGES_PATH:
            return NativeAnthropic(exchange)
        if exchange.path != _CHAT:
            raise ApiError(
                400,
                f"The Anthropic provider {backend.name} serves chat completions and "
                f"Messages, not {exchange.path}.",
                code="unsupported_endpoint",
            )
        from edge.providers.anthropic_chat import AnthropicChat  # loaded on first use

        return AnthropicChat(exchange, usage_hidden)
    return Hosted(exchange)


class Hosted(Exchange):
    """An OpenAI-compatible provider: the request's exchange with the provider's URL layout
    and its errors in OpenAI's shape."""

    __slots__ = ("inner",)

    def __init__(self, inner: Exchange) -> None:
        super().__init__(inner.path, inner.raw, inner.body, inner.stream)
        self.inner = inner

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        path, payload = self.inner.upstream(backend, rewrite)
        if backend.provider == AZURE:
            deployment = quote(str(rewrite or self.body.get("model", "")), safe="")
            tail = path.removeprefix("/v1/")
            version = quote(backend.api_version, safe="")
            return f"/openai/deployments/{deployment}/{tail}?api-version={version}", payload
        # The base URL carries the version segment (…/v1, …/v1beta/openai), as SDKs take it.
        return path.removeprefix("/v1"), payload

    def streams(self, status: int, content_type: str) -> bool:
        return self.inner.streams(status, content_type)

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        if status != 200:
            status, data = openai_error(status, data)
            headers["Content-Type"] = "application/json"
        return self.inner.whole(status, data, headers, backend)

    def first(self, chunk: bytes, backend: BackendState) -> bytes:
        return self.inner.first(chunk, backend)

    def chunk(self, chunk: bytes) -> bytes:
        return self.inner.chunk(chunk)

    def end(self) -> bytes:
        return self.inner.end()

    def cut(self, exc: BaseException) -> bytes:
        return self.inner.cut(exc)

    def give_up(self, model: str, failure: Failure | None) -> web.Response:
        return self.inner.give_up(model, failure)

    def error(self, status: int, data: bytes) -> bytes:
        return openai_error(status, data)[1]

    def error_status(self, status: int) -> int:
        return self.inner.error_status(status)


class NativeAnthropic(Hosted):
    """A Messages request to Anthropic itself: as it is, errors too (normalised only for
    the edge's own give-up answer)."""

    __slots__ = ()

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        return self.inner.upstream(backend, rewrite)

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        return self.inner.whole(status, data, headers, backend)


def openai_error(status: int, data: bytes) -> tuple[int, bytes]:
    """A provider's error in OpenAI's shape: Google's (a list, or {"error": {"code",
    "status", "message"}}) and Anthropic's are rewritten; OpenAI's pass as they are, but for
    a refused credential's message."""
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        if status in REFUSED:
            return status, refusal(status, {})
        return status, error_body(
            data[:512].decode("utf-8", "replace") or f"The provider answered {status}.",
            "upstream_error",
            None,
            None,
        )
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        doc = doc[0]  # Gemini's OpenAI-compatible endpoint wraps its error in a list
    inner = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(inner, dict) and "status" in inner:  # google.rpc.Status
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        if status >= 500:
            kind = "server_error"
        code = str(inner.get("status", "")).lower() or None
        return status, error_body(str(inner.get("message", "")), kind, None, code)
    if isinstance(doc, dict) and doc.get("type") == "error":
        from edge.providers import anthropic_out

        return anthropic_out.error(status, data)
    if status in REFUSED:
        return status, refusal(status, inner if isinstance(inner, dict) else {})
    return status, data


def refusal(status: int, inner: dict[str, Any]) -> bytes:
    """A provider's 401/403 with its type and code kept and its message the edge's own."""
    kind = str(inner.get("type") or "invalid_request_error")
    code = inner.get("code")
    message = (
        f"The provider refused the gateway's credential for it (HTTP {status}); an operator "
        "must correct the credential the gateway holds for this provider."
    )
    return error_body(message, kind, None, str(code) if code is not None else None)


def retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def honour_retry_after(backend: BackendState, headers: CIMultiDictProxy[str]) -> None:
    """Keep the backend out of this edge's routing for as long as it asked (429, 503)."""
    seconds = retry_after(headers)
    if seconds:
        backend.ejected_until = max(backend.ejected_until, time.monotonic() + seconds)


class Pools:
    """One connection pool (aiohttp session) per hosted provider, made on first use."""

    def __init__(self, config: EdgeConfig) -> None:
        self._config = config
        self._ssl = tls_context(config)
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, backend: BackendState) -> aiohttp.ClientSession:
        session = self._sessions.get(backend.name)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, keepalive_timeout=60, ssl=self._ssl
            )
            session = self._sessions[backend.name] = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=self._config.connect_timeout_seconds
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return session

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()
