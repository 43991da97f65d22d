"""The edge's aiohttp application: routes, error answers and build_app. Its keys are in
edge/appstate.py (re-exported here), its resources and tasks in edge/resources.py, and
opening its port (serve) in edge/startup.py."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from aiohttp import web

from corral.config import EdgeConfig
from edge import resources
from edge.appstate import (
    BALANCER,
    CONFIG,
    EDGE_ID,
    METRICS,
    PROXY,
    STATUS,
    SnapshotStatus,
    missing,
)
from edge.balancer import Balancer
from edge.client_request import ClientRequest
from edge.cors import install as install_cors
from edge.errors import ApiError, error_body
from edge.gateway.call import tag_response
from edge.gateway.lifetimes import limiting
from edge.gateway.limits.gate import limit_headers
from edge.gateway.pipeline import add_cache_header
from edge.gateway.policy import follow_policy
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
from edge.metrics import EdgeMetrics
from edge.proxy import Proxy
from edge.response_hook import response_hook
from edge.tracing import tracing
from edge.traffic_reporter import traffic_reports

log = logging.getLogger(__name__)

__all__ = [
    "BALANCER",
    "CONFIG",
    "EDGE_ID",
    "MESSAGES_ROUTES",
    "METRICS",
    "PROXY",
    "STATUS",
    "SnapshotStatus",
    "build_app",
    "default_edge_id",
    "guarded",
    "proxied",
]


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
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return web.Response(
        status=status, body=error_body(message, error_type, None, code), content_type=_JSON
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

    def handler(request: ClientRequest) -> Awaitable[web.StreamResponse]:
        # The proxy's coroutine itself, awaited by the guard: no frame of its own.
        return request.app[PROXY].handle(request, endpoint)

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


# The Messages API's routes: path, guarded handler.
MESSAGES_ROUTES: tuple[tuple[str, ProxyHandler], ...] = (
    (MESSAGES_PATH, guarded(_with_proxy(_handle_messages))),
    (COUNT_TOKENS_PATH, guarded(_with_proxy(_handle_count_tokens))),
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


# -- the application ------------------------------------------------------------------------


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
    for path, handler in MESSAGES_ROUTES:
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
    app.cleanup_ctx.append(resources.client_session)
    app.cleanup_ctx.append(resources.usage)
    app.cleanup_ctx.append(limiting)
    app.on_response_prepare.append(limit_headers)
    app.cleanup_ctx.append(resources.gateway)
    app.on_response_prepare.append(add_cache_header)
    app.cleanup_ctx.append(resources.snapshots)
    app.on_response_prepare.append(tag_response)
    app.cleanup_ctx.append(traffic_reports)
    app.cleanup_ctx.append(tracing)
    app.cleanup_ctx.append(follow_policy)
    if cors is not None:
        app.on_response_prepare.append(response_hook(cors.on_prepare))  # last: sees every header
    return app
