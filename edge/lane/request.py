"""The lane's request: what the hot path reads of a request (edge/client_request.py), built
once the whole message has arrived."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeVar

from aiohttp import web
from aiohttp.http_writer import HttpVersion11, StreamWriter
from multidict import CIMultiDictProxy

from edge.lane.stream import new_writer

if TYPE_CHECKING:
    from edge.lane.protocol import LaneProtocol

T = TypeVar("T")


class _Whole:
    """The body stream of a request whose body arrived with it: always at its end."""

    __slots__ = ()

    def is_eof(self) -> bool:
        return True


_WHOLE: Final = _Whole()


class LaneRequest:
    """One complete POST with a Content-Length body (the lane serves no other kind). What
    aiohttp's StreamResponse.prepare reads of its request is here too (version, keep_alive,
    _payload_writer, _prepare_hook), so a stream is prepared with this one as with aiohttp's
    (edge/lane/stream.py)."""

    __slots__ = (
        "_connection",
        "_state",
        "_writer",
        "app",
        "body",
        "content_length",
        "headers",
        "keep_alive",
        "path",
        "remote",
    )

    method: Final = "POST"
    content: Final = _WHOLE
    version: Final = HttpVersion11

    def __init__(
        self,
        app: web.Application,
        path: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        remote: str | None,
        connection: LaneProtocol,
        keep_alive: bool,
    ) -> None:
        self._connection = connection
        self._writer: StreamWriter | None = None
        self.keep_alive = keep_alive
        self.app = app
        self.path = path
        self.headers = headers
        self.body = body
        self.content_length: int | None = len(body)
        self.remote = remote
        self._state: dict[web.RequestKey[Any], Any] = {}

    async def read(self) -> bytes:
        return self.body

    @property
    def _payload_writer(self) -> StreamWriter:
        """The writer of a streamed answer, made when one is prepared."""
        if self._writer is None:
            self._writer = new_writer(self._connection)
        return self._writer

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """The response hooks, as aiohttp's prepare runs its on_response_prepare signal."""
        await self._connection.run_hooks(self, response)

    def __getitem__(self, key: web.RequestKey[T]) -> T:
        value: T = self._state[key]
        return value

    def __setitem__(self, key: web.RequestKey[T], value: T) -> None:
        self._state[key] = value

    def get(self, key: web.RequestKey[T]) -> T | None:
        value: T | None = self._state.get(key)
        return value
