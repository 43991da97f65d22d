"""The edge's aiohttp application: routes, error answers, resources, and serve()."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
import orjson
from aiohttp import web

from corral.backoff import Backoff
from corral.config import EdgeConfig
from corral.v1 import types_pb2
from edge.balancer import Balancer
from edge.client_request import ClientRequest
from edge.cors import install as install_cors
from edge.errors import ApiError, EdgeError, SnapshotError, error_body
from edge.gateway.call import tag_response
from edge.gateway.limits.gate import limit_headers, limiting
from edge.gateway.pipeline import GATEWAY, add_cache_header
from edge.gateway.pipeline import running as gateway_running
from edge.gateway.policy import follow_policy
from edge.http_errors import EdgeRunner
from edge.inbound import (
    ANY_PATH,
    CHAT,
    COMPLETIONS,
    COUNT_TOKENS_PATH,
    EMBEDDINGS,
    HEALTHZ_PATH,
    MESSAGES_PATH,
    METRICS_PATH,
    MODEL_PATH,
    MODELS_PATH,
    NATIVE_ROUTE,
    READYZ_PATH,
    Endpoint,
)
from edge.lane.server import Lane, Route
from edge.metrics import EdgeMetrics
from edge.providers.upstream import tls_context
from edge.proxy import Proxy
from edge.startup import EXPECTED_BACKENDS, missing, wait_for_backends
from edge.state import load_snapshot, save_snapshot
from edge.subscriber import SnapshotSubscriber
from edge.tracing import tracing
from edge.traffic_reporter import traffic_reports

log = logging.getLogger(__name__)


@dataclass
class SnapshotStatus:
    """Where the snapshot in force came from, and whether a control plane is streaming."""

    source: str = ""
    applied_monotonic: float = 0.0
    connected: bool = False
    # Set (then replaced) each time a snapshot is applied; edge/startup.py waits on it.
    applied: asyncio.Event = field(default_factory=asyncio.Event)


CONFIG = web.AppKey("config", EdgeConfig)
EDGE_ID = web.AppKey("edge_id", str)
BALANCER = web.AppKey("balancer", Balancer)
METRICS = web.AppKey("metrics", EdgeMetrics)
STATUS = web.AppKey("snapshot_status", SnapshotStatus)
PROXY = web.AppKey("proxy", Proxy)

_JSON = "application/json"
# edge.messages (the Anthropic translation behind it) and edge.passthrough load on first use.


# -- errors ---------------------------------------------------------------------------------
# No middleware: it would cost every request a wrapper. Each handler is guarded instead, and
# a catch-all route answers unknown paths (404) and wrong methods (405).

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The OpenAI routes run on aiohttp's request and on the lane's (edge/lane/) alike.
ProxyHandler = Callable[[ClientRequest], Awaitable[web.StreamResponse]]
AnyRequest = TypeVar("AnyRequest", bound=ClientRequest)


def guarded(
    handler: Callable[[AnyRequest], Awaitable[web.StreamResponse]],
) -> Callable[[AnyRequest], Awaitable[web.StreamResponse]]:
    """Every failure answered in OpenAI's error shape; never a traceback."""

    async def guard(request: AnyRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            return _http_error(request, exc.status, exc.reason)
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return web.Response(
                status=500,
                body=error_body(
                    "Internal error in the edge.", "server_error", None, "internal_error"
                ),
                content_type=_JSON,
            )

    return guard


def _http_error(request: ClientRequest, status: int, reason: str) -> web.Response:
    if status == 413:
        message, code = "The request body is too large.", "request_too_large"
    else:
        message, code = reason or "HTTP error", None
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.Response(
        status=status, body=error_body(message, kind, None, code), content_type=_JSON
    )


_POST_PATHS = frozenset(
    (
        CHAT.path,
        COMPLETIONS.path,
        EMBEDDINGS.path,
        MESSAGES_PATH,
        COUNT_TOKENS_PATH,
    )
)
_GET_PATHS = frozenset((MODELS_PATH, HEALTHZ_PATH, READYZ_PATH, METRICS_PATH))


async def fallback(request: web.Request) -> web.Response:
    """Unknown path: 404; known path, wrong method: 405 with Allow."""
    path = request.path
    if path in _POST_PATHS:
        allow = "POST"
    elif path in _GET_PATHS or path.startswith(MODELS_PATH + "/"):
        allow = "GET, HEAD"
    else:
        return web.Response(
            status=404,
            body=error_body(f"Unknown path: {path}", "invalid_request_error", None, "unknown_path"),
            content_type=_JSON,
        )
    return web.Response(
        status=405,
        body=error_body(
            f"Method {request.method} not allowed on {path}",
            "invalid_request_error",
            None,
            "method_not_allowed",
        ),
        content_type=_JSON,
        headers={"Allow": allow},
    )


# -- handlers -------------------------------------------------------------------------------


def proxied(endpoint: Endpoint) -> ProxyHandler:
    """The handler of an OpenAI route (guarded: every failure answered in OpenAI's shape)."""

    async def handler(request: ClientRequest) -> web.StreamResponse:
        return await request.app[PROXY].handle(request, endpoint)

    return guarded(handler)


def _with_proxy(
    serve: Callable[[Proxy, AnyRequest], Awaitable[web.StreamResponse]],
) -> Callable[[AnyRequest], Awaitable[web.StreamResponse]]:
    async def handler(request: AnyRequest) -> web.StreamResponse:
        return await serve(request.app[PROXY], request)

    return handler


async def _handle_messages(proxy: Proxy, request: ClientRequest) -> web.StreamResponse:
    from edge import messages

    return await messages.handle_messages(proxy, request)


async def _handle_count_tokens(proxy: Proxy, request: ClientRequest) -> web.StreamResponse:
    from edge import messages

    return await messages.handle_count_tokens(proxy, request)


# The Messages API's routes: path, guarded handler, whether a body may ask to stream.
MESSAGES_ROUTES: tuple[tuple[str, ProxyHandler, bool], ...] = (
    (MESSAGES_PATH, guarded(_with_proxy(_handle_messages)), True),
    (COUNT_TOKENS_PATH, guarded(_with_proxy(_handle_count_tokens)), False),
)


async def _handle_native(proxy: Proxy, request: web.Request) -> web.StreamResponse:
    from edge import passthrough

    return await passthrough.handle(proxy, request)


async def list_models(request: web.Request) -> web.Response:
    identity = request.app[PROXY].check_auth(request)
    table = request.app[BALANCER].table
    body = table.models_body if table is not None else b'{"object":"list","data":[]}'
    if identity is not None and identity.models is not None:
        body = identity.visible(body)  # a key limited to some models sees only those
    return web.Response(body=body, content_type=_JSON)


async def get_model(request: web.Request) -> web.Response:
    identity = request.app[PROXY].check_auth(request)
    model = request.match_info["model"]
    table = request.app[BALANCER].table
    body = table.model_bodies.get(model) if table is not None else None
    if identity is not None and identity.models is not None and model not in identity.models:
        body = None
    if body is None:
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return web.Response(body=body, content_type=_JSON)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type=_JSON)


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    table = app[BALANCER].table
    status = app[STATUS]
    waiting_for = missing(app, app[BALANCER])
    info: dict[str, object] = {
        "ready": table is not None and not waiting_for,
        "edge_id": app[EDGE_ID],
        "controlplane_connected": status.connected,
        "policy_version": app[PROXY].keys.policy_version,
        "keys": len(app[PROXY].keys),  # virtual (revoked included) and static
    }
    if table is not None:
        info.update(
            snapshot_version=table.version,
            cluster_id=table.cluster_id,
            snapshot_source=status.source,
            snapshot_age_seconds=_age(table.created_unix_ms),
            applied_seconds_ago=round(time.monotonic() - status.applied_monotonic, 3),
            models=len(table.routes),
            backends=len(app[BALANCER].states),
        )
    if waiting_for:
        info["missing_backends"] = waiting_for  # expected (corral up) and not registered yet
    return web.Response(
        status=200 if info["ready"] else 503, body=orjson.dumps(info), content_type=_JSON
    )


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.queued.set(request.app[BALANCER].queued)
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})


def _age(created_unix_ms: int) -> float | None:
    if not created_unix_ms:
        return None
    return round(max(0.0, time.time() - created_unix_ms / 1000.0), 3)


# -- resources ------------------------------------------------------------------------------


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # aiohttp sets TCP_NODELAY on every connection it makes or accepts, so a small chunk
    # never waits for a delayed ACK.
    connector = aiohttp.TCPConnector(
        limit=0,  # no small cap: backends decide their own concurrency
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
        ssl=tls_context(config),  # verified, plus extra_ca_file (hosted providers)
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=config.connect_timeout_seconds
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    app[PROXY] = proxy = Proxy(config, app[BALANCER], app[METRICS], session)
    try:
        yield
    finally:
        await proxy.pools.close()
        if proxy.fast is not None:
            await proxy.fast.close()
        await session.close()


async def _usage(app: web.Application) -> AsyncIterator[None]:
    from edge.gateway.usage import recording  # the recorder, its sink and writer task

    async with recording(app[CONFIG], app[EDGE_ID], app[METRICS].registry) as recorder:
        app[PROXY].recorder = recorder
        yield


def apply_snapshot(app: web.Application, snapshot: types_pb2.Snapshot, source: str) -> bool:
    """Apply unless it is older than (or the same as) the snapshot in force, same cluster."""
    balancer = app[BALANCER]
    metrics = app[METRICS]
    current = balancer.table
    if current is not None and snapshot.cluster_id == current.cluster_id:
        if snapshot.version < current.version:
            metrics.snapshots_refused.inc()
            log.warning(
                "refused snapshot %d from %s: older than %d",
                snapshot.version,
                source,
                current.version,
            )
            return False
        if snapshot.version == current.version:
            app[STATUS].source = source  # confirmed by the control plane: same content
            return False
    balancer.apply(snapshot)
    if PROXY in app:
        app[PROXY].fallbacks.apply(snapshot)
    status = app[STATUS]
    status.source = source
    status.applied_monotonic = time.monotonic()
    status.applied.set()
    status.applied = asyncio.Event()
    metrics.snapshot_version.set(snapshot.version)
    metrics.snapshots_applied.labels(source).inc()
    log.info(
        "applied snapshot %d (cluster %s, %d backends) from %s",
        snapshot.version,
        snapshot.cluster_id or "-",
        len(snapshot.backends),
        source,
    )
    return True


async def _gateway(app: web.Application) -> AsyncIterator[None]:
    """Guardrails and the response cache (edge/gateway/pipeline.py), when configured."""
    proxy = app[PROXY]
    async with gateway_running(app[CONFIG], app[METRICS].registry, lambda: proxy.session) as gw:
        app[GATEWAY] = gw
        proxy.gateway = gw if gw.active else None
        yield


async def _snapshots(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    state_dir = config.state_dir
    if state_dir:
        try:
            persisted = await asyncio.to_thread(load_snapshot, state_dir)
        except SnapshotError as exc:
            log.warning("ignoring the persisted snapshot: %s", exc)
            persisted = None
        if persisted is not None:
            apply_snapshot(app, persisted, "state")

    async def on_snapshot(snapshot: types_pb2.Snapshot) -> None:
        if apply_snapshot(app, snapshot, "controlplane") and state_dir:
            try:
                await asyncio.to_thread(save_snapshot, state_dir, snapshot)
            except SnapshotError as exc:
                log.warning("%s", exc)

    def current() -> tuple[int, str]:
        table = app[BALANCER].table
        return (0, "") if table is None else (table.version, table.cluster_id)

    def on_connected(connected: bool) -> None:
        app[STATUS].connected = connected
        app[METRICS].controlplane_connected.set(1 if connected else 0)

    failures = app[METRICS].snapshot_failures
    subscriber = SnapshotSubscriber(
        config,
        app[EDGE_ID],
        current=current,
        on_snapshot=on_snapshot,
        on_connected=on_connected,
        on_failed_snapshot=failures.labels("apply").inc,
    )
    task = asyncio.create_task(
        supervise(subscriber.run, "snapshot subscriber", failures.labels("subscriber").inc),
        name="edge-snapshot-subscriber",
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the application ------------------------------------------------------------------------


async def supervise(
    run: Callable[[], Awaitable[None]], what: str, on_crash: Callable[[], None]
) -> None:
    """Run `run` for good: an exception is logged and counted, and it starts again after a
    growing pause; cancellation ends it."""
    backoff = Backoff(base=0.5, cap=10.0)
    while True:
        started = time.monotonic()
        try:
            await run()
            return  # it ended by itself (nothing to follow)
        except Exception:
            on_crash()
            log.exception("%s failed; restarting it", what)
        if time.monotonic() - started > 60:
            backoff.reset()  # it had been running fine for a while
        await asyncio.sleep(backoff.next())


def default_edge_id(config: EdgeConfig) -> str:
    return config.edge_id or f"{socket.gethostname()}:{os.getpid()}"


def build_app(
    config: EdgeConfig, extra: Callable[[web.Application], None] | None = None
) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[EDGE_ID] = default_edge_id(config)
    app[BALANCER] = Balancer(config)
    app[METRICS] = metrics = EdgeMetrics()
    app[STATUS] = SnapshotStatus()

    def created_ms() -> int:
        table = app[BALANCER].table
        return table.created_unix_ms if table is not None else 0

    metrics.bind_snapshot_age(created_ms)
    cors = install_cors(app, config.cors)  # its preflight route first
    for endpoint in (CHAT, COMPLETIONS, EMBEDDINGS):
        app.router.add_post(endpoint.path, proxied(endpoint))
    for path, handler, _ in MESSAGES_ROUTES:
        app.router.add_post(path, handler)
    app.router.add_route("*", NATIVE_ROUTE, guarded(_with_proxy(_handle_native)))
    app.router.add_get(MODELS_PATH, guarded(list_models))
    app.router.add_get(MODEL_PATH, guarded(get_model))
    app.router.add_get(HEALTHZ_PATH, healthz)
    app.router.add_get(READYZ_PATH, guarded(readyz))
    app.router.add_get(METRICS_PATH, guarded(metrics_handler))
    if extra is not None:
        extra(app)  # more routes (corral up: the dashboard), before the catch-all
    app.router.add_route("*", ANY_PATH, fallback)
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_usage)
    app.cleanup_ctx.append(limiting)
    app.on_response_prepare.append(limit_headers)
    app.cleanup_ctx.append(_gateway)
    app.on_response_prepare.append(add_cache_header)
    app.cleanup_ctx.append(_snapshots)
    app.on_response_prepare.append(tag_response)
    app.cleanup_ctx.append(traffic_reports)
    app.cleanup_ctx.append(tracing)
    app.cleanup_ctx.append(follow_policy)
    if cors is not None:
        app.on_response_prepare.append(cors.on_prepare)  # last: sees every header
    return app


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise EdgeError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    config: EdgeConfig,
    *,
    ready: asyncio.Event | None = None,
    extra: Callable[[web.Application], None] | None = None,
    expect_backends: Collection[str] = (),
    expect_within: float = 30.0,
) -> None:
    """Serve until cancelled; then stop accepting, let requests finish within the grace.

    With `expect_backends` (corral up), the port opens once they are all in the routing
    table, or after `expect_within` seconds (the missing ones are logged)."""
    host, port = split_listen(config.listen)
    app = build_app(config, extra)
    app[EXPECTED_BACKENDS] = frozenset(expect_backends)
    runner = EdgeRunner(
        app,
        handler_cancellation=True,  # a client that hangs up cancels its upstream request
        # aiohttp closes a connection whose request headers are not complete by then (its
        # keep-alive timer also runs before the first request): a slowloris cannot wait it out.
        keepalive_timeout=config.client_timeout_seconds,
        access_log=None,
        shutdown_timeout=config.shutdown_grace_seconds,
    )
    await runner.setup()
    lane: Lane | None = None
    listening: asyncio.Server | None = None
    try:
        if expect_backends:
            waiting = await wait_for_backends(app, app[BALANCER], app[STATUS], expect_within)
            if waiting:
                log.warning("opening after %gs without backends %s", expect_within, waiting)
        if config.server == "lane":
            lane = Lane(
                runner,
                [Route(e.path, proxied(e), e.streams) for e in (CHAT, COMPLETIONS, EMBEDDINGS)]
                + [Route(*route) for route in MESSAGES_ROUTES],
                max_body=config.max_body_bytes,
                client_timeout=config.client_timeout_seconds,
                on_handover=app[METRICS].lane_handovers.inc,
            )
            listening = await lane.listen(host, port, reuse_port=config.workers > 1, backlog=2048)
        else:
            site = web.TCPSite(runner, host, port, reuse_port=config.workers > 1, backlog=2048)
            await site.start()
        log.info("edge %s serving on %s", app[EDGE_ID], config.listen)
        if ready is not None:
            ready.set()
        await asyncio.Future()  # until cancelled
    finally:
        grace = config.shutdown_grace_seconds
        if listening is not None and lane is not None:
            listening.close()  # no new connections; then the lane's own finish or close
            await lane.shutdown(grace)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace + 2):
                await runner.cleanup()
