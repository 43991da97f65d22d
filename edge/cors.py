"""CORS for browser clients: off unless `edge.cors.allow_origins` names origins.

When on, every OPTIONS request is a preflight answered here (no auth: browsers send none on
a preflight), and every response to an allowed Origin carries Access-Control-Allow-Origin
and exposes the response's own X-Corral-* (and rate-limit, request-id, Retry-After) headers
to the page. When off, nothing is registered: no cost per request.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from corral.config import CorsConfig
from edge.client_request import ClientRequest
from edge.errors import error_body
from edge.inbound import ANY_PATH

_METHODS: Final = "GET, POST, HEAD, OPTIONS"
_EXPOSED_PREFIXES: Final = ("x-corral-", "x-ratelimit-")
_EXPOSED: Final = frozenset(("retry-after", "x-request-id"))


class Cors:
    """One edge's CORS policy."""

    def __init__(self, config: CorsConfig) -> None:
        self.any_origin = "*" in config.allow_origins
        self.origins = frozenset(o.rstrip("/") for o in config.allow_origins if o != "*")
        self.credentials = config.allow_credentials
        self.allow_headers = ", ".join(config.allow_headers)
        self.max_age = str(config.max_age_seconds)

    def allowed(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def allow_origin(self, origin: str) -> str:
        # "*" cannot carry credentials: a credentialed policy names the origin itself.
        return "*" if self.any_origin and not self.credentials else origin

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None or not self.allowed(origin):
            return web.Response(
                status=403,
                body=error_body(
                    f"Origin {origin!r} is not allowed to call this API.",
                    "permission_error",
                    None,
                    "cors_origin_not_allowed",
                ),
                content_type="application/json",
            )
        headers = {
            "Access-Control-Allow-Origin": self.allow_origin(origin),
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": self.allow_headers,
            "Access-Control-Max-Age": self.max_age,
            "Vary": "Origin",
        }
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return web.Response(status=204, headers=headers)

    def on_prepare(self, request: ClientRequest, response: web.StreamResponse) -> None:
        """The allowed Origin's headers on an answer (the plain function of its response_hook)."""
        origin = request.headers.get("Origin")
        if origin is None or request.method == "OPTIONS" or not self.allowed(origin):
            return
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = self.allow_origin(origin)
        headers.add("Vary", "Origin")
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        exposed = [
            name
            for name in headers
            if name.lower().startswith(_EXPOSED_PREFIXES) or name.lower() in _EXPOSED
        ]
        if exposed:
            headers["Access-Control-Expose-Headers"] = ", ".join(exposed)


def install(app: web.Application, config: CorsConfig) -> Cors | None:
    """Register the preflight route (call before every other route); the caller appends
    response_hook(cors.on_prepare) last, so it sees the headers the other hooks add. None when
    off."""
    if not config.allow_origins:
        return None
    cors = Cors(config)
    app.router.add_route("OPTIONS", ANY_PATH, cors.preflight)
    return cors
