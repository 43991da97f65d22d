"""What the hot path needs of a client's request: aiohttp's web.Request has it all, and so
has the lane's lean request (edge/lane/request.py), so both run the same handler code."""

from __future__ import annotations

from typing import Protocol, TypeVar

from aiohttp import web
from multidict import CIMultiDictProxy

T = TypeVar("T")


class Body(Protocol):
    def is_eof(self) -> bool:
        """Whether the whole body has arrived."""
        ...


class ClientRequest(Protocol):
    """The request as the proxy, the gateway, limits, tracing and the cache read it."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def content(self) -> Body: ...

    @property
    def app(self) -> web.Application: ...

    async def read(self) -> bytes: ...

    def __getitem__(self, key: web.RequestKey[T]) -> T: ...

    def __setitem__(self, key: web.RequestKey[T], value: T) -> None: ...

    def get(self, key: web.RequestKey[T]) -> T | None: ...
