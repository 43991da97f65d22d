"""The lane beside aiohttp: its routes, its connections, listening and stopping.

The edge listens with the lane's protocol factory; aiohttp's runner stays set up (its
application, hooks and cleanup) and takes every connection the lane hands over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from edge.client_request import ClientRequest
from edge.lane.protocol import LaneProtocol
from edge.response_hook import Hook, plain_form


@dataclass(frozen=True, slots=True)
class Route:
    """A path the lane serves and its handler."""

    path: str
    handler: Callable[[ClientRequest], Awaitable[web.StreamResponse]]


class Lane:
    """The lane's protocol factory and the state its connections share."""

    def __init__(
        self,
        runner: web.AppRunner,
        routes: Iterable[Route],
        *,
        max_body: int,
        client_timeout: float,
        on_handover: Callable[[], None] = lambda: None,
        poll: Callable[[], None] | None = None,
    ) -> None:
        server = runner.server
        assert server is not None, "set the runner up first"
        self._server = server
        self.app = runner.app
        self.routes = {route.path.encode(): route for route in routes}
        self.longest_path = max(map(len, self.routes), default=0)
        # aiohttp's on_response_prepare hooks, frozen by now; the edge's take any request.
        # Each with its plain form, which the lane calls as it is (no coroutine per hook per
        # answer: edge/response_hook.py); a hook without one (a site's own) is awaited.
        self.hooks = tuple(
            (plain_form(hook), hook)
            for hook in cast(Iterable[Hook], runner.app.on_response_prepare)
        )
        self.max_body = max_body
        self.client_timeout = client_timeout
        self.connections: set[LaneProtocol] = set()
        self.closing = False
        self._on_handover = on_handover
        # Called on every read of a client's bytes (edge/busypoll.py), when busy polling is on.
        self.poll = poll

    def __call__(self) -> LaneProtocol:
        return LaneProtocol(self)

    def aiohttp_handler(self) -> RequestHandler:
        """A fresh aiohttp connection handler (the runner's server tracks it)."""
        self._on_handover()
        return self._server()

    async def listen(
        self, host: str, port: int, *, reuse_port: bool, backlog: int
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self, host, port, reuse_port=reuse_port, backlog=backlog, reuse_address=True
        )

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; let requests in flight finish within `grace`, then
        close the rest (their handlers are cancelled)."""
        self.closing = True
        for connection in list(self.connections):
            if connection.idle:
                connection.close()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.wait(busy)
        for connection in list(self.connections):
            connection.close()
