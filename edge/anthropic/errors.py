"""Anthropic's error shape: AnthropicError, a constructor per type, OpenAI errors re-dressed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from edge.anthropic.sse import sse_event

JSON = dict[str, Any]

# Anthropic's error `type` for each HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class AnthropicError(Exception):
    """A failure answered in Anthropic's shape: `{"type":"error","error":{"type","message"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for_status(status)
        self.request_id = request_id

    def payload(self) -> JSON:
        out: JSON = {"type": "error", "error": {"type": self.error_type, "message": self.message}}
        if self.request_id:
            out["request_id"] = self.request_id
        return out

    def body(self) -> bytes:
        """The JSON body of a non-streaming error response."""
        return orjson.dumps(self.payload())

    def sse(self) -> bytes:
        """The `event: error` that reports this failure inside an already started stream."""
        return sse_event("error", self.payload())


def error_type_for_status(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def invalid_request(message: str) -> AnthropicError:
    return AnthropicError(400, message, "invalid_request_error")


def authentication_error(message: str = "invalid x-api-key") -> AnthropicError:
    return AnthropicError(401, message, "authentication_error")


def not_found_error(message: str) -> AnthropicError:
    return AnthropicError(404, message, "not_found_error")


def request_too_large(message: str = "Request exceeds the maximum allowed size.") -> AnthropicError:
    return AnthropicError(413, message, "request_too_large")


def rate_limit_error(message: str = "Rate limited; retry later.") -> AnthropicError:
    return AnthropicError(429, message, "rate_limit_error")


def api_error(message: str = "Internal server error.") -> AnthropicError:
    return AnthropicError(500, message, "api_error")


def overloaded_error(message: str = "Overloaded", status: int = 529) -> AnthropicError:
    """503 or 529 (Anthropic's own "overloaded" status); both carry `overloaded_error`."""
    return AnthropicError(status, message, "overloaded_error")


def error_from_openai(status: int, body: bytes | Mapping[str, Any] | None) -> AnthropicError:
    """An OpenAI-shaped error (from a backend, or the edge's own) re-dressed for Anthropic.

    Accepts `{"error": {"message": ...}}`, vLLM's flat `{"object": "error", "message": ...}`,
    Ollama's `{"error": "text"}`, or anything else (the status alone then decides).
    """
    parsed: object = body
    if isinstance(body, bytes | bytearray):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            text = bytes(body).decode("utf-8", "replace").strip()
            return AnthropicError(status, text[:500] or f"upstream answered HTTP {status}")
    message = None
    if isinstance(parsed, Mapping):
        inner = parsed.get("error")
        if isinstance(inner, Mapping):
            message = inner.get("message")
        elif isinstance(inner, str):
            message = inner
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    if not isinstance(message, str) or not message:
        message = f"upstream answered HTTP {status}"
    return AnthropicError(status, message)
