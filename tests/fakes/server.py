"""FakeServer: an aiohttp app on 127.0.0.1 that speaks one inference server's real HTTP API.

Lifecycle and switches live here; the handlers in `openai_api`, `anthropic_api`, `native_api`,
`ollama_api` and `engines_api`. `stop()` behaves like a killed process: the listener closes and
every open connection is aborted (RST), so a client mid-stream sees a broken connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.models import (
    DEFAULT_VERSIONS,
    KINDS,
    MODES,
    FakeKind,
    FakeMode,
    FakeModel,
    RecordedRequest,
    ollama_name,
)

BODY_KEY = web.RequestKey("fake_body", object)
CUT_KEY = web.RequestKey("fake_cut", bool)

_counter = itertools.count(1)


class FakeServerError(Exception):
    """Misuse of a FakeServer (bad kind, bad mode, start twice)."""


class RequestRejected(Exception):
    """A handler refuses a request; the middleware answers in the API's error shape."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeServer:
    """A fake inference server of one kind; see tests/fakes/__init__.py for the API."""

    def __init__(
        self,
        kind: FakeKind = "openai",
        models: Sequence[str | FakeModel] = ("fake-model",),
        name: str | None = None,
        *,
        port: int = 0,
        anthropic_native: bool = False,
        total_slots: int = 4,
        metrics_enabled: bool = True,
        version: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise FakeServerError(f"unknown fake kind {kind!r}; expected one of {KINDS}")
        self.kind: FakeKind = kind
        self.name = name or f"{kind}-{next(_counter)}"
        self.models: list[FakeModel] = [self._spec(m) for m in models]
        self.port = port
        self.host = "127.0.0.1"
        self.anthropic_native = anthropic_native
        self.total_slots = total_slots
        self.metrics_enabled = metrics_enabled
        self.version = version or DEFAULT_VERSIONS[kind]
        # Like `vllm serve --api-key` / `llama-server --api-key`: refuse requests without it.
        self.api_key = api_key
        self.stream_chunks = 5
        self.chunk_delay = 0.0
        self.response_delay = 0.0
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self.completed = 0
        self._inflight = 0
        self._base_running = 0
        self._base_waiting = 0
        self._kv_cache_usage = 0.0
        self._mode: FakeMode = "ok"
        self._mode_changed = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._stopped.set()
        self.started_at = time.time()

    # ----------------------------------------------------------------- lifecycle

    @property
    def openai_url(self) -> str:
        """Where an OpenAI client points: the root, or the kind's own prefix, then /v1."""
        from tests.fakes.engines_api import OPENAI_PREFIX

        return f"{self.url}{OPENAI_PREFIX.get(self.kind, '')}/v1"

    @property
    def url(self) -> str:
        if not self.port:
            raise FakeServerError(f"fake {self.name} has no port yet: start() it first")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> FakeServer:
        """Listen on 127.0.0.1 (a free port the first time, the same port afterwards)."""
        if self._server is not None:
            raise FakeServerError(f"fake {self.name} is already running")
        from tests.fakes.routes import build_app  # a cycle: routes need FakeServer's type

        app = build_app(self)
        runner = web.AppRunner(
            app, handle_signals=False, handler_cancellation=True, access_log=None
        )
        await runner.setup()
        protocol_factory = runner.server
        assert protocol_factory is not None  # setup() made it
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                protocol_factory, self.host, self.port, reuse_address=True
            )
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(server.sockets[0].getsockname()[1])
        self._runner, self._server = runner, server
        self._stopping = False
        self._stopped = asyncio.Event()
        self.started_at = time.time()
        return self

    async def stop(self) -> None:
        """Die like a killed process: close the listener and abort every open connection."""
        server, runner = self._server, self._runner
        if server is None or runner is None:
            return
        self._stopping = True
        self._server = self._runner = None
        self._stopped.set()
        server.close()
        handler_factory = runner.server
        if handler_factory is not None:
            for protocol in handler_factory.connections:
                transport = protocol.transport
                if transport is not None:
                    transport.abort()
        await asyncio.sleep(0)  # let connection_lost run and cancel the handlers
        await runner.cleanup()
        await server.wait_closed()

    async def restart(self) -> None:
        """Stop, then start again on the same port (the backend comes back at its URL)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> FakeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ switches

    @property
    def mode(self) -> FakeMode:
        return self._mode

    @mode.setter
    def mode(self, value: FakeMode) -> None:
        if value not in MODES:
            raise FakeServerError(f"unknown fake mode {value!r}; expected one of {MODES}")
        self._mode = value
        # Wake requests hung in the previous mode: they go on under the new one.
        self._mode_changed.set()
        self._mode_changed = asyncio.Event()

    def set_load(self, running: int = 0, waiting: int = 0, kv_cache_usage: float = 0.0) -> None:
        """Simulated load on top of real inflight requests (metrics, /slots, /props)."""
        self._base_running, self._base_waiting = running, waiting
        self._kv_cache_usage = kv_cache_usage

    @property
    def running_requests(self) -> int:
        return self._base_running + self._inflight

    @property
    def waiting_requests(self) -> int:
        return self._base_waiting

    @property
    def kv_cache_usage(self) -> float:
        return self._kv_cache_usage

    def hold(self) -> None:
        """Make inference requests wait (counted in `inflight`) until release()."""
        self._released.clear()

    def release(self) -> None:
        """Let held inference requests answer."""
        self._released.set()

    def load_model(self, model: str) -> None:
        self.model(model, required=True).loaded = True

    def unload_model(self, model: str) -> None:
        self.model(model, required=True).loaded = False

    def add_model(self, model: str | FakeModel) -> FakeModel:
        spec = self._spec(model)
        self.models.append(spec)
        return spec

    def remove_model(self, model: str) -> None:
        spec = self.model(model, required=True)
        self.models.remove(spec)

    def model(self, model: str, *, required: bool = False) -> FakeModel | None:
        """The served model called `model` (Ollama names match with or without `:latest`)."""
        wanted = self._canonical(model)
        for spec in self.models:
            if spec.id == wanted or spec.id == model:
                return spec
        if required:
            raise FakeServerError(f"fake {self.name} does not serve model {model!r}")
        return None

    def _spec(self, model: str | FakeModel) -> FakeModel:
        if isinstance(model, FakeModel):
            return dataclasses.replace(model, id=self._canonical(model.id))
        return FakeModel(id=self._canonical(model))

    def _canonical(self, model: str) -> str:
        return ollama_name(model) if self.kind == "ollama" else model

    # ------------------------------------------------------------- observations

    @property
    def inflight(self) -> int:
        """Inference requests being served now (health, model and metrics probes excluded)."""
        return self._inflight

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until predicate() holds; it is re-checked whenever a request starts or ends."""
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    async def wait_inflight(self, count: int, within: float = 10.0) -> None:
        """Wait until at least `count` inference requests are in flight."""
        await self.wait_until(lambda: self._inflight >= count, within)

    async def wait_requests(self, count: int, within: float = 10.0) -> None:
        """Wait until the fake has recorded at least `count` requests."""
        await self.wait_until(lambda: len(self.requests) >= count, within)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -------------------------------------------------------- request plumbing

    def _record(self, request: web.Request, body: Any) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=CIMultiDict(request.headers),
                body_json=body,
                query=dict(request.query),
            )
        )

    async def _hang(self) -> None:
        """Block while in hang mode; returns when the mode changes, cancelled on stop."""
        while self._mode == "hang":
            waiter = asyncio.ensure_future(self._mode_changed.wait())
            stopped = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopped.cancel()
            if self._stopped.is_set():
                # The server is gone: never answer; the transport is aborted anyway.
                await asyncio.Event().wait()

    @asynccontextmanager
    async def serving(self, request: web.Request) -> AsyncIterator[None]:
        """Count one inference request in flight; count it cancelled if the client cut it."""
        self._inflight += 1
        self._notify()
        try:
            if not self._released.is_set():
                await self._released.wait()
            if self.response_delay:
                await asyncio.sleep(self.response_delay)
            yield
            if not request.get(CUT_KEY):
                self.completed += 1
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler) unless we are being killed.
            if not self._stopping and not request.get(CUT_KEY):
                self.cancelled += 1
            raise
        finally:
            self._inflight -= 1
            self._notify()

    async def stream(
        self,
        request: web.Request,
        chunks: Iterable[bytes],
        content_type: str = "text/event-stream",
    ) -> web.StreamResponse:
        """Write chunks with `chunk_delay` between them; a cut connection is `cancelled`."""
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            for index, chunk in enumerate(chunks):
                if index and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            # The client cut the stream before its end (a write to a closed transport).
            request[CUT_KEY] = True
            if not self._stopping:
                self.cancelled += 1
        return response

    def json(self, payload: Any, status: int = 200) -> web.Response:
        return web.Response(
            body=orjson.dumps(payload), status=status, content_type="application/json"
        )


FAKE_KEY = web.AppKey("fake", FakeServer)
