"""aiohttp's on_response_prepare hooks whose work is a plain function.

aiohttp awaits every on_response_prepare hook, but the edge's own wait for nothing: each is
made by `response_hook` from a plain function, which the lane (edge/lane/server.py) finds with
`plain_form` and calls as it is, without a coroutine, its frame and an await per hook per
answer (~575 instructions each, callgrind, d5b5479). Any other hook (a site's own) the lane
awaits."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from edge.client_request import ClientRequest

PlainHook = Callable[[ClientRequest, web.StreamResponse], None]
Hook = Callable[[ClientRequest, web.StreamResponse], Awaitable[None]]

# Weak: a hook made per app (CORS's, around its Cors) leaves with its app, not kept here.
_PLAIN: Final[weakref.WeakKeyDictionary[Hook, PlainHook]] = weakref.WeakKeyDictionary()


def response_hook(plain: PlainHook) -> Hook:
    """An on_response_prepare hook that runs `plain` (which must not wait for anything)."""

    async def hook(request: ClientRequest, response: web.StreamResponse) -> None:
        plain(request, response)

    _PLAIN[hook] = plain
    return hook


def plain_form(hook: Hook) -> PlainHook | None:
    """The plain function a hook made by `response_hook` runs; None for any other hook."""
    return _PLAIN.get(hook)
