"""The lane's request: what the hot path reads of a request (edge/client_request.py), built
once the whole message has arrived."""

from __future__ import annotations

from typing import Any, Final, TypeVar

from aiohttp import web
from multidict import CIMultiDictProxy

T = TypeVar("T")


class _Whole:
    """The body stream of a request whose body arrived with it: always at its end."""

    __slots__ = ()

    def is_eof(self) -> bool:
        return True


_WHOLE: Final = _Whole()


class LaneRequest:
    """One complete POST with a Content-Length body (the lane serves no other kind)."""

    __slots__ = ("_state", "app", "body", "content_length", "headers", "path", "remote")

    method: Final = "POST"
    content: Final = _WHOLE

    def __init__(
        self,
        app: web.Application,
        path: str,
        headers: CIMultiDictProxy[str],
        body: bytes,
        remote: str | None,
    ) -> None:
        self.app = app
        self.path = path
        self.headers = headers
        self.body = body
        self.content_length: int | None = len(body)
        self.remote = remote
        self._state: dict[web.RequestKey[Any], Any] = {}

    async def read(self) -> bytes:
        return self.body

    def __getitem__(self, key: web.RequestKey[T]) -> T:
        value: T = self._state[key]
        return value

    def __setitem__(self, key: web.RequestKey[T], value: T) -> None:
        self._state[key] = value

    def get(self, key: web.RequestKey[T]) -> T | None:
        value: T | None = self._state.get(key)
        return value
