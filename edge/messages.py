"""Anthropic's Messages API at the edge: `POST /v1/messages` and `/v1/messages/count_tokens`.

A request is validated once, then goes through the same attempt loop as every OpenAI request
(Proxy.run: sticky or least-connections, retries, ejection, streaming relay). Per attempt, a
backend that speaks Messages itself (its agent reports CAPABILITY_ANTHROPIC_MESSAGES) gets the
body as it is (with its own name for an aliased model); any other backend gets the
translation to `/v1/chat/completions`, and its answer is translated back (edge/anthropic/).
Every error, the edge's own included, is answered in Anthropic's shape.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web
from multidict import CIMultiDict

from corral.v1 import types_pb2
from edge import anthropic
from edge.anthropic import AnthropicError, StreamTranslator
from edge.client_request import ClientRequest
from edge.errors import ApiError
from edge.exchange import Admission, Exchange, Failure, sse_gap
from edge.inbound import CHAT, MESSAGES_PATH, check_depth, check_spelling
from edge.proxy import Proxy
from edge.routing import chat_key, session_header_key
from edge.table import BackendState, ModelRoute

_CHAT_PATH: Final = CHAT.path
_JSON: Final = "application/json"
# Strict OpenAI-compatible servers refuse `top_k`; the local servers accept it as an extra.
_NO_TOP_K: Final = frozenset((types_pb2.BACKEND_TYPE_OPENAI,))
# The least max_tokens the edge caps a request to (see MessagesExchange._max_tokens).
_MIN_CAP: Final = 256


class Refused(ApiError):
    """A request refused with an Anthropic error (validation, untranslatable content)."""

    def __init__(self, error: AnthropicError) -> None:
        super().__init__(error.status, error.message, error_type=error.error_type)
        self.error = error


def error_response(error: AnthropicError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=error.status, body=error.body(), content_type=_JSON, headers=headers)


def from_api_error(exc: ApiError) -> web.Response:
    """The edge's own OpenAI-shaped error (auth, unknown model, busy) in Anthropic's shape."""
    if isinstance(exc, Refused):
        return error_response(exc.error, exc.headers)
    error = anthropic.error_from_openai(exc.status, exc.body())
    if exc.status == 503:
        error = anthropic.overloaded_error(error.message, 503)
    return error_response(error, exc.headers)


def parse_messages(raw: bytes) -> dict[str, Any]:
    """A `/v1/messages` body, validated; anything else is a Refused (400, Anthropic shape)."""
    try:
        return anthropic.validate_messages_request(_load(raw))
    except AnthropicError as exc:
        raise Refused(exc) from None


def translate(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat body; content with no OpenAI equivalent is a Refused (400)."""
    try:
        return anthropic.to_openai_request(body)
    except AnthropicError as exc:
        raise Refused(exc) from None
    except orjson.JSONEncodeError as exc:  # tool inputs are written as JSON strings
        raise _unwritable(exc) from None


def _unwritable(exc: orjson.JSONEncodeError) -> Refused:
    return Refused(anthropic.invalid_request(f"The request cannot be translated: {exc}."))


def _dumps(payload: dict[str, Any]) -> bytes:
    """The upstream body; the OpenAI one nests a level deeper (a tool's schema sits in
    `function.parameters`), so what the client's body allowed may not be writable."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise _unwritable(exc) from None


def parse_count_tokens(raw: bytes) -> dict[str, Any]:
    """A `/v1/messages/count_tokens` body, validated; anything else is a Refused (400)."""
    try:
        return anthropic.validate_count_tokens_request(_load(raw))
    except AnthropicError as exc:
        raise Refused(exc) from None


def _load(raw: bytes) -> Any:
    if not raw:
        raise Refused(anthropic.invalid_request("The request body is empty; expected JSON."))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(
            anthropic.invalid_request(f"The request body is not valid JSON: {exc}")
        ) from None
    if not isinstance(body, dict):
        return body  # validate_* refuses it in its own words
    try:
        # What the edge could not write again (orjson writes less nesting than it reads) is
        # a 400 now, as on the OpenAI routes (edge/inbound.py), not a 500 in the translation;
        # so is a second spelling of `model`, which a native backend might read instead.
        check_depth(raw, body)
        check_spelling(body)
    except ApiError as exc:
        raise Refused(anthropic.invalid_request(exc.message)) from None
    return body


class MessagesExchange(Exchange):
    """One Messages request: native to some backends, translated for the others."""

    __slots__ = (
        "input_tokens",
        "model",
        "openai",
        "rewritten",
        "thinking",
        "translating",
        "translator",
    )

    def __init__(self, raw: bytes, body: dict[str, Any], openai: dict[str, Any] | None) -> None:
        super().__init__(MESSAGES_PATH, raw, body, body.get("stream") is True)
        self.model: str = body["model"]
        # The OpenAI chat body (None when every candidate speaks Messages natively).
        self.openai = openai
        self.thinking = anthropic.thinking_requested(body)
        self.translating = False
        self.translator: StreamTranslator | None = None
        self.input_tokens = -1  # estimated once, when first needed
        # A native backend's own name for an aliased model, JSON-encoded: its answer names
        # that model, and the client is told the name it asked for.
        self.rewritten: bytes | None = None

    def body_changed(self) -> None:
        super().body_changed()
        if self.openai is not None:
            self.openai = translate(self.body)

    def _estimate(self) -> int:
        if self.input_tokens < 0:
            self.input_tokens = anthropic.count_tokens(self.body)
        return self.input_tokens

    def _max_tokens(self, backend: BackendState, model: str) -> int | None:
        """max_tokens capped to what the backend's context leaves after the prompt (None:
        unchanged). Anthropic clients ask for far more than a small local context holds,
        and servers refuse a prompt plus max_tokens over their context.

        The prompt's size is an estimate (a flat 1,500 tokens an image, however small), so
        the cap never goes below an eighth of the context (and never below 256 tokens): a
        rough estimate must not shrink an answer to nothing. A prompt that really leaves
        less is the backend's to refuse, in its own words."""
        context = backend.contexts.get(model)
        asked: int = self.body["max_tokens"]
        if not context:
            return None
        limit = max(context - self._estimate(), context // 8, _MIN_CAP)
        return limit if asked > limit else None

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        model = rewrite or self.model
        capped = self._max_tokens(backend, model)
        if backend.native_messages or self.openai is None:
            self.translating = False
            self.rewritten = orjson.dumps(model) if model != self.model else None
            if capped is None:
                return super().upstream(backend, rewrite)
            return MESSAGES_PATH, _dumps({**self.body, "model": model, "max_tokens": capped})
        self.translating = True
        payload = dict(self.openai)
        payload["model"] = model
        if capped is not None:
            payload["max_tokens"] = capped
        if backend.backend_type in _NO_TOP_K:
            payload.pop("top_k", None)
        return _CHAT_PATH, _dumps(payload)

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        if not self.translating:
            if status == 200 and self.rewritten is not None:
                data = self._renamed(data)
            return web.Response(status=status, body=data, headers=headers)
        headers["Content-Type"] = _JSON
        if status != 200:
            return web.Response(
                status=status,
                body=anthropic.error_from_openai(status, data).body(),
                headers=headers,
            )
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            error = AnthropicError(502, "The backend sent a malformed answer.", "api_error")
            return web.Response(status=502, body=error.body(), headers=headers)
        message = anthropic.from_openai_response(
            answer,
            model=self.model,
            stop_sequences=self.body.get("stop_sequences") or (),
            thinking=self.thinking,
        )
        return web.Response(status=200, body=orjson.dumps(message), headers=headers)

    def _renamed(self, data: bytes) -> bytes:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(message, dict) or "model" not in message:
            return data
        message["model"] = self.model
        return orjson.dumps(message)

    def first(self, chunk: bytes, backend: BackendState) -> bytes:
        if not self.translating:
            if self.rewritten is not None:
                # message_start (in the first chunk) names the model; servers write compact
                # JSON, some with a space after the colon.
                asked = orjson.dumps(self.model)
                for sep in (b":", b": "):
                    chunk = chunk.replace(
                        b'"model"' + sep + self.rewritten, b'"model"' + sep + asked, 1
                    )
            self.last = chunk
            return chunk
        self.translator = translator = StreamTranslator(
            model=self.model,
            stop_sequences=self.body.get("stop_sequences") or (),
            input_tokens=self._estimate(),
            thinking=self.thinking,
        )
        return translator.start() + translator.feed_bytes(chunk)

    def chunk(self, chunk: bytes) -> bytes:
        translator = self.translator
        if translator is None:
            self.last = chunk
            return chunk
        return translator.feed_bytes(chunk)

    def end(self) -> bytes:
        translator = self.translator
        if translator is None:
            return b""
        out = translator.feed_end()
        if not translator.done:  # ended before any finish_reason: the answer is cut short
            out += translator.error(
                anthropic.api_error("The backend stream ended before the answer was complete.")
            )
        return out

    def cut(self, exc: BaseException) -> bytes:
        kind = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
        error = anthropic.api_error(
            f"The backend stream was interrupted ({kind}); the answer is incomplete."
        )
        if self.translator is not None:
            return self.translator.error(error)
        return sse_gap(self.last) + error.sse()  # the backend's own events: one may be open

    def give_up(self, model: str, failure: Failure | None) -> web.Response:
        retry = {"Retry-After": (failure.retry_after if failure else "") or "1"}
        if failure is None:
            error = anthropic.overloaded_error(
                f"No backend can serve the model `{model}` right now.", 503
            )
        elif failure.status:
            error = anthropic.error_from_openai(failure.status, failure.body)
            if failure.status == 503:
                error = anthropic.overloaded_error(error.message, 503)
        elif failure.reason == "timeout":
            error = AnthropicError(504, "The backend did not answer in time.", "timeout_error")
        else:
            error = AnthropicError(502, "Could not reach a backend for this model.", "api_error")
        return error_response(error, retry)


def _all_native(route: ModelRoute) -> bool:
    return all(b.native_messages for group in (*route.tiers, route.degraded) for b in group)


async def handle_messages(proxy: Proxy, request: ClientRequest) -> web.StreamResponse:
    """POST /v1/messages."""

    async def admit() -> Admission:
        identity = proxy.check_auth(request)
        raw = await proxy.read_body(request)
        body = parse_messages(raw)
        model: str = body["model"]
        if identity is not None:
            identity.check_model(model)
        if proxy.fallbacks.known(model):  # a chain's targets may speak either dialect
            openai: dict[str, Any] | None = translate(body)
        else:
            openai = None if _all_native(proxy.balancer.route_for(model)) else translate(body)

        def sticky() -> bytes | None:
            key = session_header_key(request.headers, proxy.config.session_headers)
            if key is None:
                key = chat_key(model, anthropic.conversation_head(body))
            return key

        exchange = MessagesExchange(raw, body, openai)
        return Admission(exchange, lambda: proxy.balancer.route_for(model), sticky)

    try:
        return await proxy.run(request, "messages", admit)
    except ApiError as exc:
        return from_api_error(exc)


async def handle_count_tokens(proxy: Proxy, request: ClientRequest) -> web.StreamResponse:
    """POST /v1/messages/count_tokens, answered by the edge (an estimate, no backend)."""
    try:
        identity = proxy.check_auth(request)
        raw = await proxy.read_body(request)
        body = parse_count_tokens(raw)
        if identity is not None:
            identity.check_model(str(body.get("model", "")))
        answer = count_tokens_answer(body)
    except ApiError as exc:
        return from_api_error(exc)
    return web.Response(body=answer, content_type=_JSON)


def count_tokens_answer(body: dict[str, Any]) -> bytes:
    """The count_tokens answer for a parsed body (a Refused when it cannot be measured)."""
    try:
        return orjson.dumps(anthropic.count_tokens_response(body))
    except orjson.JSONEncodeError as exc:  # tool inputs and schemas are measured as JSON
        raise _unwritable(exc) from None
