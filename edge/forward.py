"""Request headers forwarded to backends: an explicit allow-list (corral.config.HeadersConfig).

Tracing (traceparent, tracestate), request ids, OpenAI organization/project and Anthropic
version/beta pass as the client sent them; User-Agent passes with Corral's product token
appended (RFC 9110 10.1.5). Hop-by-hop headers and the client's credentials never pass: the
configuration refuses them, and they are not looked at here.

Two forms, one choice of headers (`pairs`): a multidict for aiohttp's client (`headers`),
and header lines as bytes for the fast client (`lines`), appended to its request head that
is serialised once per backend and path — per request only the few forwarded values are
encoded, nothing is copied or looked up in a cache keyed by values that change every time
(a trace id, a request id).
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

    __slots__ = ("_bare", "_names", "_user_agent")

    def __init__(self, config: HeadersConfig) -> None:
        names = tuple(dict.fromkeys(h.lower() for h in config.forward))
        self._user_agent = _USER_AGENT in names
        self._names = tuple(n for n in names if n != _USER_AGENT)
        # The lines when the client sent none of the names (nor a User-Agent of its own).
        self._bare = f"{_USER_AGENT}: {PRODUCT}\r\n".encode() if self._user_agent else b""

    def pairs(
        self, incoming: CIMultiDictProxy[str], base: CIMultiDictProxy[str]
    ) -> list[tuple[str, str]]:
        """What the client sent that the allow-list names and `base` does not set, in the
        allow-list's order, User-Agent last (with the product token)."""
        out = [
            (name, value)
            for name in self._names
            if (value := incoming.get(name)) is not None and name not in base
        ]
        if self._user_agent:
            client = incoming.get(_USER_AGENT)
            out.append((_USER_AGENT, f"{client} {PRODUCT}" if client else PRODUCT))
        return out

    def headers(
        self, incoming: CIMultiDictProxy[str], base: CIMultiDictProxy[str]
    ) -> CIMultiDictProxy[str]:
        """`base` (content type, the backend's credential) plus what the client sent that
        the allow-list names; `base` itself when there is nothing to add."""
        pairs = self.pairs(incoming, base)
        if not pairs:
            return base
        out = CIMultiDict(base)
        for name, value in pairs:
            out[name] = value
        return CIMultiDictProxy(out)

    def lines(self, incoming: CIMultiDictProxy[str], base: CIMultiDictProxy[str]) -> bytes:
        """The same headers as `pairs`, as HTTP/1.1 header lines (each ending in CRLF), in
        the bytes the client sent them as (aiohttp and the lane decode header values as
        UTF-8 with surrogateescape). Per request on the hot path: no list of pairs, and the
        usual answer (nothing forwarded, or only Corral's User-Agent) made once."""
        get = incoming.get
        lines: list[str] | None = None
        for name in self._names:
            value = get(name)
            if value is not None and name not in base:
                if lines is None:
                    lines = []
                lines.append(f"{name}: {value}\r\n")
        if self._user_agent:
            client = get(_USER_AGENT)
            if client:
                agent = f"{_USER_AGENT}: {client} {PRODUCT}\r\n"
            elif lines is None:
                return self._bare
            else:
                agent = f"{_USER_AGENT}: {PRODUCT}\r\n"
            if lines is None:
                return agent.encode("utf-8", "surrogateescape")
            lines.append(agent)
        if lines is None:
            return b""
        return "".join(lines).encode("utf-8", "surrogateescape")
