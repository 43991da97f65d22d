"""The dashboard over HTTP: a page, its script and style, one JSON data endpoint, a login.

Read-only. When an admin token is configured, the page and the data answer only to a
session cookie (HttpOnly, SameSite=Strict, an HMAC of the token, never the token itself) set
by the login form, or to `Authorization: Bearer <token>`; the token never goes in a URL.
Without a token the dashboard answers only on a loopback address: on any other it refuses
and says to configure one. The only POSTs are login and logout (SameSite=Strict cookies,
nothing else changes state), and strict security headers keep the page from being framed
or loading anything from elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from controlplane.dashboard.answer import Answer, accepts_gzip
from controlplane.dashboard.backend_json import BackendJson
from controlplane.dashboard.data import state
from controlplane.dashboard.timeline import Timeline
from controlplane.errors import ControlPlaneError
from controlplane.replica import Replica
from controlplane.state import RoutingView
from controlplane.store.base import StoreError
from controlplane.traffic.buckets import CACHE_SECONDS
from corral.config import Secret

log = logging.getLogger(__name__)

# While someone asked within this long, the document is rebuilt every CACHE_SECONDS off
# the request path (a GET serves the last one built); after that the refresher idles.
KEEP_REFRESHING_SECONDS = 30.0
# A document older than this (the refresher idled) is rebuilt by the GET that finds it.
STALE_SECONDS = 3 * CACHE_SECONDS

COOKIE = "corral_dashboard"
_SESSION_CONTEXT = b"corral-dashboard-session-v1"
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> bytes:
    return (resources.files("controlplane.dashboard") / "assets" / name).read_bytes()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Dashboard:
    """One dashboard: attached to a replica once it runs, served by any aiohttp app."""

    def __init__(self, token: Secret | None, bind_host: str) -> None:
        self._token = token.reveal().encode() if token is not None else None
        self._session = (
            hmac.new(self._token, _SESSION_CONTEXT, hashlib.sha256).hexdigest()
            if self._token is not None
            else ""
        )
        self._open = token is None and is_loopback(bind_host)
        self.replica: Replica | None = None
        self.timeline: Timeline | None = None
        self._pieces = BackendJson()
        # The last data document built, and when (monotonic) a GET last asked for one.
        self._answer: Answer | None = None
        self._asked = 0.0
        self._wanted = asyncio.Event()
        self._building = asyncio.Lock()
        self._page = _asset("index.html")
        self._login = _asset("login.html")
        self._script = _asset("app.js")
        self._style = _asset("app.css")

    def attach(self, replica: Replica) -> None:
        self.replica = replica

    async def follow(self, view: RoutingView) -> None:
        """Keep the health timeline and, while the page is read, its data document, until
        cancelled."""
        self.timeline = Timeline(view)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.timeline.follow(), name="dashboard timeline")
            tasks.create_task(self._refresh(), name="dashboard refresher")

    async def _refresh(self) -> None:
        """Rebuild the document every CACHE_SECONDS while GETs keep asking for it, so a GET
        never waits for a build (at 1,000 backends one costs tens of ms of CPU)."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while time.monotonic() - self._asked < KEEP_REFRESHING_SECONDS:
                answer = self._answer
                if answer is not None:
                    await asyncio.sleep(max(0.0, answer.built + CACHE_SECONDS - time.monotonic()))
                try:
                    await self._build(fresh_for=CACHE_SECONDS)
                except (ControlPlaneError, StoreError) as exc:
                    log.info("dashboard document not rebuilt: %s", exc)
                    await asyncio.sleep(CACHE_SECONDS)

    async def _build(self, fresh_for: float) -> Answer:
        """The document, built unless one younger than fresh_for exists (one build at a
        time: concurrent callers share it)."""
        async with self._building:
            answer = self._answer
            if answer is not None and time.monotonic() - answer.built < fresh_for:
                return answer
            replica, timeline = self.replica, self.timeline
            assert replica is not None and timeline is not None
            started = time.monotonic()
            doc = await state(replica.parts(), replica.replica_id, timeline, self._pieces)
            answer = Answer(orjson.dumps(doc), started)
            await asyncio.sleep(0)  # the loop runs between serializing and compressing
            answer.gzipped()  # browsers ask for gzip: compressed here, not in a GET
            self._answer = answer
            return answer

    # -- HTTP ------------------------------------------------------------------------------

    def mount(self, parent: web.Application, prefix: str = "/dashboard") -> None:
        """Serve the dashboard under prefix of parent (register before any catch-all)."""

        async def home(request: web.Request) -> web.Response:
            raise web.HTTPFound(prefix + "/")

        parent.router.add_get(prefix, home)
        parent.add_subapp(prefix, self.app())

    def app(self) -> web.Application:
        """The routes, to mount at /dashboard (add_subapp)."""
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/app.js", self._static(self._script, "text/javascript"))
        app.router.add_get("/app.css", self._static(self._style, "text/css"))
        app.router.add_get("/api/state", self._state)
        app.router.add_post("/login", self._login_post)
        app.router.add_post("/logout", self._logout)
        return app

    def _static(self, body: bytes, content_type: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(
                body=body,
                content_type=content_type,
                charset="utf-8",
                headers=_SECURITY_HEADERS,
            )

        return handler

    def _allowed(self, request: web.Request) -> bool | None:
        """True: authorized; False: needs the token; None: refused (no token, not loopback)."""
        if self._token is None:
            return True if self._open else None
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip().encode("utf-8", "surrogateescape")
            return hmac.compare_digest(given, self._token)
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    def _refused(self) -> web.Response:
        return web.Response(
            status=403,
            text="The dashboard is served beyond loopback only with an admin token: set "
            "controlplane.admin_token (or admin_token_file).",
            headers=_SECURITY_HEADERS,
        )

    async def _index(self, request: web.Request) -> web.Response:
        allowed = self._allowed(request)
        if allowed is None:
            return self._refused()
        body = self._page if allowed else self._login.replace(b"{{error}}", b"")
        return web.Response(
            body=body, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS
        )

    async def _login_post(self, request: web.Request) -> web.Response:
        if self._token is None:
            raise web.HTTPSeeOther("./", headers=_SECURITY_HEADERS)
        form = await request.post()
        given = str(form.get("token", "")).strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self._token):
            log.info("dashboard login refused from %s", request.remote)
            body = self._login.replace(
                b"{{error}}", b'<p class="error">That is not the admin token.</p>'
            )
            return web.Response(
                status=401,
                body=body,
                content_type="text/html",
                charset="utf-8",
                headers=_SECURITY_HEADERS,
            )
        response = web.HTTPSeeOther("./", headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            self._session,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path=_home(request),
        )
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("./", headers=_SECURITY_HEADERS)
        response.del_cookie(COOKIE, path=_home(request))
        raise response

    async def _state(self, request: web.Request) -> web.Response:
        allowed = self._allowed(request)
        if allowed is None:
            return self._refused()
        if not allowed:
            return _json({"error": "unauthorized: log in with the admin token"}, 401)
        replica, timeline = self.replica, self.timeline
        if replica is None or timeline is None:
            return _json({"error": "the control plane is starting"}, 503)
        now = self._asked = time.monotonic()
        self._wanted.set()
        answer = self._answer
        if answer is None or now - answer.built >= STALE_SECONDS:
            # The first GET after idle: the refresher was not running, build here.
            try:
                answer = await self._build(fresh_for=CACHE_SECONDS)
            except ControlPlaneError as exc:
                return _json({"error": str(exc)}, 503)
            except StoreError as exc:
                return _json({"error": f"the state store is unavailable: {exc}"}, 503)
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            response = _body(answer.gzipped(), 200)
            response.headers["Content-Encoding"] = "gzip"
        else:
            response = _body(answer.body, 200)
        response.headers["Vary"] = "Accept-Encoding"
        return response


def _json(doc: Any, status: int) -> web.Response:
    return _body(orjson.dumps(doc), status)


def _body(body: bytes, status: int) -> web.Response:
    return web.Response(
        status=status, body=body, content_type="application/json", headers=_SECURITY_HEADERS
    )


def _home(request: web.Request) -> str:
    """The dashboard's own path (where its cookie applies), from a request to one of its
    routes: /dashboard/login -> /dashboard/."""
    return request.path.rsplit("/", 1)[0] + "/"
