"""The agent process: detect the server, probe it on a jittered interval, report, serve /healthz.

`serve(config)` runs until cancelled. Cancellation is the shutdown signal: the reporter says
Goodbye to the control plane (bounded by shutdown_grace_seconds) so the backend leaves
routing at once, then everything is closed and CancelledError propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from google.protobuf import json_format

from agent.detect import Detection, detect
from agent.errors import AgentConfigError
from agent.health import HealthTracker
from agent.http import BackendClient
from agent.limits import bounded_status
from agent.metrics import AgentMetrics, state_name
from agent.reporter import Reporter
from agent.servers import PROBES, ServerProbe
from agent.web import start_web
from corral import __version__
from corral.backoff import jittered
from corral.config import AgentConfig, Secret
from corral.credentials import Credentials, MissingCredential
from corral.v1 import types_pb2

log = logging.getLogger(__name__)

TYPES = ("auto", *PROBES)
# A probe slower than this fraction of the probe timeout counts as slow (DEGRADED when it
# persists for two cycles).
SLOW_FRACTION = 0.5


async def serve(config: AgentConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run one agent until cancelled; set `ready` once it is probing and serving /healthz."""
    await Agent(config).run(ready)


class Agent:
    """One agent beside one inference server."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = resolve(config)
        self.metrics = AgentMetrics()
        self.tracker = HealthTracker()
        self.reporter = Reporter(self.config, self.metrics, __version__)
        self.server_type: str | None = None if self.config.type == "auto" else self.config.type
        self.detection: Detection | None = None
        self.probe: ServerProbe | None = None
        self.status: types_pb2.BackendStatus | None = None
        # Where /healthz and /metrics are served, once they are.
        self.web_addresses: list[Any] = []

    async def run(self, ready: asyncio.Event | None = None) -> None:
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    # A fresh connection per probe: no stale keep-alive sockets after the
                    # server restarts, and probes see the server as a new client would.
                    connector=aiohttp.TCPConnector(force_close=True, limit=0),
                    trust_env=False,
                )
            )
            client = BackendClient(
                config.backend,
                session,
                timeout=config.probe_timeout_seconds,
                api_key=probe_key(config),
                metrics=self.metrics,
            )
            if config.metrics_listen:
                self.web_addresses = await start_web(stack, config.metrics_listen, self)
                log.info("serving /healthz and /metrics on %s", config.metrics_listen)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.reporter.run(), name="agent-reporter")
                tasks.create_task(self._probe_loop(client), name="agent-prober")
                if ready is not None:
                    ready.set()

    async def _probe_loop(self, client: BackendClient) -> None:
        config = self.config
        if self.server_type is None:
            self.server_type = await self._detect(client)
        slow = config.probe_timeout_seconds * SLOW_FRACTION
        probe = PROBES[self.server_type](client, slow_seconds=slow)
        self.probe = probe
        self.reporter.set_backend(self.spec(probe.backend_type, probe.base_path))
        while True:
            started = time.monotonic()
            observation = await probe.probe()
            before = self.tracker.state
            if self.tracker.observe(observation.health, observation.reason):
                self._log_health(before)
            self.metrics.set_health(self.tracker.state)
            status = bounded_status(
                types_pb2.BackendStatus(
                    health=self.tracker.state,
                    reason=self.tracker.reason,
                    models=observation.models or [],
                    load=observation.load,
                    capabilities=probe.capabilities,
                    server_version=probe.server_version,
                )
            )
            self.status = status
            self.reporter.update(status)
            pause = started + jittered(config.probe_interval_seconds) - time.monotonic()
            await asyncio.sleep(max(pause, 0.0))

    async def _detect(self, client: BackendClient) -> str:
        """Detect the server type; while nothing matches (or it is down), keep trying."""
        said: tuple[str, ...] | None = None
        while True:
            found = await detect(client)
            self.detection = found
            if found.server_type is not None:
                log.info(
                    "detected %s at %s: %s", found.server_type, client.base_url, found.evidence
                )
                return found.server_type
            summary = (found.evidence, *found.outcomes)
            if summary != said:
                said = summary
                log.warning(
                    "no inference server type detected at %s: %s; probes: %s; "
                    "trying again every %gs",
                    client.base_url,
                    found.evidence,
                    "; ".join(found.outcomes),
                    self.config.probe_interval_seconds,
                )
            await asyncio.sleep(jittered(self.config.probe_interval_seconds))

    def _log_health(self, before: types_pb2.HealthState.ValueType) -> None:
        state = self.tracker.state
        level = logging.WARNING if state == types_pb2.HEALTH_STATE_UNHEALTHY else logging.INFO
        log.log(
            level,
            "backend %s: %s -> %s (%s)",
            self.config.name,
            state_name(before) if before else "start",
            state_name(state),
            self.tracker.reason,
        )

    def spec(
        self, backend_type: types_pb2.BackendType.ValueType, base_path: str = ""
    ) -> types_pb2.BackendSpec:
        """What the edge is told; `base_path` is where the server's OpenAI API lives
        (Docker Model Runner's /engines, Lemonade's /api), so edges send /v1/... under it."""
        config = self.config
        return types_pb2.BackendSpec(
            name=config.name,
            url=config.backend.rstrip("/") + base_path,
            type=backend_type,
            priority=config.priority,
            weight=config.weight,
            labels=dict(config.labels),
            max_concurrency=config.max_concurrency,
            credential=config.credential,
        )

    def describe(self) -> dict[str, Any]:
        """The agent's current state as JSON-able data (/healthz)."""
        reporter = self.reporter
        status: dict[str, Any] = {}
        if self.status is not None:
            status = json_format.MessageToDict(
                self.status,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        return {
            "agent_id": self.config.agent_id,
            "backend": {
                "name": self.config.name,
                "url": self.config.backend,
                "type": self.server_type,
            },
            "detection": self.detection.evidence if self.detection else None,
            "health": state_name(self.tracker.state) if self.status else "detecting",
            "reason": self.tracker.reason,
            "status": status,
            "controlplane": {
                "connected": reporter.connected_to is not None,
                "address": reporter.connected_to,
                "controlplane_id": reporter.controlplane_id,
                "session_id": reporter.session_id,
                "drained": reporter.drained,
                "last_error": reporter.last_error,
                "acked_seq": reporter.acked_seq,
            },
        }


def resolve(config: AgentConfig) -> AgentConfig:
    """Check the configuration and fill the derived defaults (name, agent id)."""
    url = config.backend.strip()
    if not url:
        raise AgentConfigError("no backend URL: give --backend http://HOST:PORT")
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1": named without the URL, which may hold a password
        raise AgentConfigError("the backend URL (--backend) is malformed") from None
    if "@" in parts.netloc:
        # Named without the URL: what precedes the @ is a password. Kept in the URL it would
        # be logged and shown on /healthz; aiohttp refuses it beside a key, and the control
        # plane refuses it anyway.
        raise AgentConfigError(
            "the backend URL (--backend) must not carry credentials (user:password@); give "
            "the backend's key with --backend-api-key-file or --credential instead"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentConfigError(f"backend URL {url!r} must be http(s)://HOST[:PORT]")
    try:
        port = parts.port
    except ValueError:
        raise AgentConfigError(f"backend URL {url!r} has a bad port") from None
    if config.type not in TYPES:
        raise AgentConfigError(f"unknown backend type {config.type!r} (one of {', '.join(TYPES)})")
    if not config.controlplane:
        raise AgentConfigError("no control-plane address: give --controlplane HOST:PORT")
    if config.probe_interval_seconds <= 0 or config.probe_timeout_seconds <= 0:
        raise AgentConfigError("probe interval and timeout must be positive")
    if config.weight < 0 or config.max_concurrency < 0:
        raise AgentConfigError("weight and max concurrency must not be negative")
    name = config.name or default_name(parts.hostname, port or _DEFAULT_PORTS[parts.scheme])
    agent_id = config.agent_id or f"{socket.gethostname()}:{os.getpid()}"
    return replace(config, backend=url, name=name, agent_id=agent_id)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def default_name(host: str, port: int) -> str:
    """A backend name from host and port: `10.0.0.5:8000` -> `10.0.0.5-8000`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{host}-{port}").strip("-.").lower() or "backend"


def probe_key(config: AgentConfig) -> Secret | None:
    """The key the agent probes with: backend_api_key, else its credential reference
    resolved here (a reference that does not resolve stops the agent with a clear error)."""
    if config.backend_api_key is not None or not config.credential:
        return config.backend_api_key
    credentials = Credentials(config.credentials, config.credentials_dir)
    try:
        return credentials.resolve(config.credential)
    except MissingCredential as exc:
        raise AgentConfigError(f"backend {config.backend}: {exc}") from None
