"""The agent's own HTTP door: /healthz (its view of the backend, as JSON) and /metrics."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.errors import AgentConfigError

if TYPE_CHECKING:
    from agent.service import Agent

AGENT_KEY: web.AppKey[Agent] = web.AppKey("agent")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT_KEY].describe())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[AGENT_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[AGENT_KEY] = agent
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_web(stack: contextlib.AsyncExitStack, listen: str, agent: Agent) -> list[Any]:
    """Serve the app on listen (HOST:PORT); stopped when stack closes. Returns bound addresses."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise AgentConfigError(f"metrics listen address {listen!r} must be HOST:PORT")
    runner = web.AppRunner(build_app(agent), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port_text))
        await site.start()
    except OSError as exc:
        raise AgentConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    return list(runner.addresses)
