"""Sending a request upstream once more when a kept-alive connection turns out to be closed.

llama-server advertises `Keep-Alive` after a streamed answer but closes the connection; the
next request on it fails before any byte reaches the server ("Can not write request body",
or the server disconnected before answering). That is not the backend failing: the request
goes once more on a fresh connection, to the same backend, so a conversation is not moved
(and its prompt cache lost) and the backend is not counted as failing. A refused connection
is a real failure and is not resent.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL


async def request(
    session: aiohttp.ClientSession, method: str, url: URL, data: Any, headers: Any
) -> aiohttp.ClientResponse:
    """session.request, sent once more on a fresh connection when the pooled one was stale."""
    try:
        return await session.request(method, url, data=data, headers=headers)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        if not isinstance(data, bytes | bytearray | None):
            raise  # a streamed body cannot be sent twice
        return await session.request(method, url, data=data, headers=headers)
