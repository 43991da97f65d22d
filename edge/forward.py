"""Request headers forwarded to backends: an explicit allow-list (corral.config.HeadersConfig).

Tracing (traceparent, tracestate), request ids, OpenAI organization/project and Anthropic
version/beta pass as the client sent them; User-Agent passes with Corral's product token
appended (RFC 9110 10.1.5). Hop-by-hop headers and the client's credentials never pass: the
configuration refuses them, and they are not looked at here.
"""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from corral import __version__
from corral.config import HeadersConfig

PRODUCT: Final = f"corral/{__version__}"
_USER_AGENT: Final = "user-agent"


class Forwarding:
    """Builds each upstream request's headers: the backend's own, plus the allowed ones."""

    __slots__ = ("_names", "_user_agent")

    def __init__(self, config: HeadersConfig) -> None:
        names = tuple(dict.fromkeys(h.lower() for h in config.forward))
        self._user_agent = _USER_AGENT in names
        self._names = tuple(n for n in names if n != _USER_AGENT)

    def headers(
        self, incoming: CIMultiDictProxy[str], base: CIMultiDictProxy[str]
    ) -> CIMultiDictProxy[str]:
        """`base` (content type, the backend's credential) plus what the client sent that
        the allow-list names; `base` itself when there is nothing to add."""
        out: CIMultiDict[str] | None = None
        for name in self._names:
            value = incoming.get(name)
            if value is not None and name not in base:
                if out is None:
                    out = CIMultiDict(base)
                out[name] = value
        if self._user_agent:
            if out is None:
                out = CIMultiDict(base)
            client = incoming.get(_USER_AGENT)
            out[_USER_AGENT] = f"{client} {PRODUCT}" if client else PRODUCT
        return base if out is None else CIMultiDictProxy(out)
