"""Writing a web.Response as aiohttp does: its headers, then Content-Length, Date, Server and
Connection as aiohttp adds them, the response hooks' headers after, then the body.

Uses aiohttp's private `http_writer._serialize_headers` (tests/edge/test_aiohttp_private.py)."""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import _serialize_headers as serialize_headers

_EMPTY_STATUSES = frozenset((204, 304))


def finish_headers(response: web.Response, keep_alive: bool) -> tuple[bytes, bool]:
    """Complete the response's headers before the hooks run (as aiohttp's prepare does):
    its body, and whether the connection stays open after it."""
    body = response.body
    if body is None:
        body = b""
    elif not isinstance(body, bytes):
        raise TypeError(f"the lane writes bytes bodies only, not {type(body).__name__}")
    headers = response.headers  # names as istr (aiohttp.hdrs): multidict need not fold them
    status = response.status
    if status < 200 or status in _EMPTY_STATUSES:  # no body, and no length, may follow
        body = b""
        if status != 304:
            headers.popall(hdrs.CONTENT_LENGTH, None)
        headers.popall(hdrs.TRANSFER_ENCODING, None)
    else:
        if hdrs.CONTENT_LENGTH not in headers:
            headers[hdrs.CONTENT_LENGTH] = str(len(body))
        if body:
            headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if response.keep_alive is False:  # force_close()
        keep_alive = False
    connection = headers.get(hdrs.CONNECTION)
    if connection is None:
        if not keep_alive:
            headers[hdrs.CONNECTION] = "close"
    elif connection.lower() == "close":
        keep_alive = False
    return body, keep_alive


def head(response: web.StreamResponse) -> bytes:
    """The status line and headers as aiohttp serialises them (its C writer, which refuses a
    newline or carriage return in a value with ValueError)."""
    return serialize_headers(f"HTTP/1.1 {response.status} {response.reason}", response.headers)
