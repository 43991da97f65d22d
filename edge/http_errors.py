"""Requests aiohttp refuses before any handler runs (a malformed request line, a header line
longer than its limit, too many headers) answered in OpenAI's error shape, like every other
error of the edge, instead of aiohttp's plain text: 431 for headers too large, 414 for a URL
too long, else 400.

aiohttp has no public hook for these answers; `RequestHandler.handle_error` builds them. The
edge's runner makes its servers build handlers that override it. This leans on aiohttp's
`AppRunner._make_server` and `Server._kwargs`/`_loop` (pinned below 4 in pyproject.toml;
tests/hostile_http/ fails if they change).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from edge.errors import error_body

log = logging.getLogger(__name__)


def refusal(status: int, exc: BaseException | None) -> web.Response:
    """The JSON answer to a request aiohttp could not read."""
    if isinstance(exc, LineTooLong) and _is_target(exc.args[0]):
        status, message, code = 414, "The request URL is too long.", "uri_too_long"
    elif isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower()
    ):
        status, message, code = 431, "The request headers are too large.", "headers_too_large"
    elif status >= 500:
        message, code = "The edge failed to handle the request.", "internal_error"
    else:
        detail = exc.message if isinstance(exc, BadHttpMessage) else "malformed request"
        message, code = f"The request could not be read as HTTP: {detail}", "bad_http_request"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    response = web.Response(
        status=status, body=error_body(message, kind, None, code), content_type="application/json"
    )
    response.force_close()
    return response


def _is_target(line: object) -> bool:
    """Whether the line too long was the request target (llhttp hands aiohttp the URL, which
    starts with "/" or a scheme; header names cannot, header values rarely do)."""
    text = bytes(line) if isinstance(line, bytes | bytearray) else str(line).encode()
    return text.startswith((b"/", b"http://", b"https://"))


class _JsonErrorHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: the answer had begun; drop it
            raise ConnectionError("Response is sent already, cannot send an error response")
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.debug("refused an unreadable request from %s: %r", request.remote, exc)
        return refusal(status, exc)


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """web.AppRunner whose connections answer unreadable requests with OpenAI JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same object and state, our handler class
        return server
