"""Streams in the lane: aiohttp's own StreamResponse and StreamWriter, on the lane's connection.

A streamed answer (edge/relay.py: a RelayResponse staged while the backend computes its first
token) is prepared with the lane's request exactly as aiohttp prepares it with its own: the
same headers in the same order (Transfer-Encoding, Date, Server, then the response hooks'),
the head held back until the first chunk, the same chunk framing and end. All the writer
needs of the lane is its connection's transport and flow control, which `Port` gives it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter

if TYPE_CHECKING:
    from edge.lane.protocol import LaneProtocol


class Port:
    """What aiohttp's StreamWriter uses of its protocol (StreamWriter.drain and _write): the
    transport, whether writing is paused, and a wait until it resumes."""

    __slots__ = ("_connection",)

    def __init__(self, connection: LaneProtocol) -> None:
        self._connection = connection

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._connection.transport

    @property
    def _paused(self) -> bool:
        return self._connection.writing_paused

    async def _drain_helper(self) -> None:
        await self._connection.writable()


def new_writer(connection: LaneProtocol) -> StreamWriter:
    """aiohttp's writer for a stream on this lane connection."""
    return StreamWriter(cast(BaseProtocol, Port(connection)), asyncio.get_running_loop())


def ended(response: web.StreamResponse) -> bool:
    """Whether a stream the handler returned was ended (write_eof): else the connection
    cannot carry another answer. aiohttp's private flag (tests/edge/test_aiohttp_private.py)."""
    return bool(response._eof_sent)
