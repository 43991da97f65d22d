"""The edge's exceptions and the OpenAI error shape every failure is answered with."""

from __future__ import annotations

import orjson
from aiohttp import web


class EdgeError(Exception):
    """Root of every error the edge raises on purpose."""


class ApiError(EdgeError):
    """A request answered with an OpenAI-shaped error: status, message, type, param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.param, self.code)

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=self.body(),
            content_type="application/json",
            headers=self.headers,
        )


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    """OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


class SnapshotError(EdgeError):
    """A snapshot could not be read, persisted or applied."""
