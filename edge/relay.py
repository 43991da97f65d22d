"""Writing an answer to the client: the response headers relayed, and bytes that know a dead
client from a failed backend."""

from __future__ import annotations

from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from edge.client_request import ClientRequest
from edge.errors import EdgeError
from edge.h1pool import Answer
from edge.table import BackendState

BACKEND_HEADER: Final = "X-Corral-Backend"
ROUTE_HEADER: Final = "X-Corral-Route"
# Set by aiohttp for our own response, or meaningless past this hop.
_DROPPED_HEADERS: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "date",
        "server",
        "proxy-connection",
        "upgrade",
        "trailer",
        "te",
    )
)


class RelayResponse(web.StreamResponse):
    # Keep the headers buffered until the first chunk, so both leave in one segment
    # (a lone header segment can wait for a delayed ACK before the first chunk follows).
    _send_headers_immediately = False


def relay_headers(
    upstream: aiohttp.ClientResponse | Answer, backend: BackendState, label: str
) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        if name.lower() not in _DROPPED_HEADERS:
            headers.add(name, value)
    headers[BACKEND_HEADER] = backend.name
    headers[ROUTE_HEADER] = label
    return headers


class ClientGone(EdgeError):
    """The client hung up while we wrote to it."""


async def to_client(
    relay: RelayResponse, data: bytes | None, request: ClientRequest | None = None
) -> None:
    """Write to the client (prepare first when given the request; None ends the stream);
    a dead client connection becomes ClientGone, never mistaken for a backend failure.
    Streams are aiohttp's alone: the lane (edge/lane/) hands streaming requests over."""
    try:
        if request is not None:
            assert isinstance(request, web.BaseRequest), "a stream needs aiohttp's request"
            await relay.prepare(request)
        if data is None:
            await relay.write_eof()
        else:
            await relay.write(data)
    except ConnectionResetError:
        raise ClientGone from None
