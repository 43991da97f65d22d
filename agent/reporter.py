"""The agent's one long-lived stream to the control plane (corral.v1.AgentService/Connect).

Register (with the first status) → Registered; then a Report on every status change and at
least every heartbeat interval; Goodbye and half-close on shutdown. A broken stream is
reconnected with gRPC's backoff (1 s, x1.6, +-20 % jitter, capped at 10 s), rotating through
the configured replicas, and the new Register carries the previous session id so the control
plane takes over the still-live lease and the backend never leaves routing. A session that
ran for a while is followed by an immediate attempt at the next replica (a replica restart or
max-connection-age rotation should cost nothing); only failed attempts wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

from agent.errors import (
    AgentConfigError,
    ControlPlaneError,
    ControlPlaneRejectedError,
    ControlPlaneUnavailableError,
)
from agent.metrics import AgentMetrics
from corral import channels
from corral.backoff import Backoff
from corral.config import AgentConfig
from corral.tasks import retrieved, stopped
from corral.tls import TLSFileError, channel_credentials
from corral.v1 import agent_pb2, agent_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

# Client keepalive: a dead replica or path is noticed within ~30 s even with no traffic.
KEEPALIVE_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
# How long a replica may take to answer Register (connecting included). Once a lease TTL is
# known it shrinks to half of it, so an unreachable replica costs less than the lease: the
# next one is tried while the session is still alive to be resumed.
REGISTER_TIMEOUT_SECONDS = 5.0
MIN_REGISTER_TIMEOUT_SECONDS = 1.5
# A session shorter than this, even if registered, counts as a failed attempt (no spinning).
STABLE_SESSION_SECONDS = 2.0

_REJECTIONS = {
    grpc.StatusCode.UNAUTHENTICATED: (
        "the agent token is missing or wrong; give the control plane's agent token with "
        "--controlplane-token-file"
    ),
    grpc.StatusCode.PERMISSION_DENIED: "this agent is not allowed to register",
    grpc.StatusCode.INVALID_ARGUMENT: "the control plane rejected the backend spec",
    grpc.StatusCode.ALREADY_EXISTS: (
        "another live agent holds this backend name; give this agent its own --name"
    ),
}


class Reporter:
    """Keeps the backend registered and its status reported; owns the gRPC channel."""

    def __init__(self, config: AgentConfig, metrics: AgentMetrics, agent_version: str) -> None:
        if not config.controlplane:
            raise ValueError("no control-plane address")
        self._config = config
        self._addresses = tuple(config.controlplane)
        self._metrics = metrics
        self._agent_version = agent_version
        self._agent_id = config.agent_id
        self._credentials = _credentials(config)
        self._metadata: tuple[tuple[str, str], ...] = ()
        if config.controlplane_token is not None:
            self._metadata = (("authorization", f"Bearer {config.controlplane_token.reveal()}"),)
        self._spec: types_pb2.BackendSpec | None = None
        self._status: types_pb2.BackendStatus | None = None
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._seq = 0
        self._last_heard = 0.0
        self._register_written = False
        self._register_timeout = REGISTER_TIMEOUT_SECONDS
        self._last_write: asyncio.Future[None] | None = None
        # Visible state, for /healthz and tests.
        self.session_id = ""
        self.controlplane_id = ""
        self.connected_to: str | None = None
        self.drained = False
        self.last_error = ""
        self.acked_seq = 0
        self.sessions = 0

    def set_backend(self, spec: types_pb2.BackendSpec) -> None:
        self._spec = spec

    def update(self, status: types_pb2.BackendStatus) -> None:
        """Take the latest status; reported at once when it differs from the last one."""
        if status != self._status:
            self._status = status
            self._changed.set()
        if self._spec is not None:
            self._ready.set()

    async def run(self) -> None:
        """Stay connected until cancelled; on cancellation say goodbye first."""
        await self._ready.wait()
        backoff = Backoff()
        attempt = 0
        while True:
            address = self._addresses[attempt % len(self._addresses)]
            if attempt:
                self._metrics.reconnects.inc()
            attempt += 1
            started: float | None = None
            try:
                started = await self._session(address)
            except ControlPlaneRejectedError as exc:
                started = None
                self.last_error = str(exc)
                log.error(
                    "control plane %s refused this agent (%s): %s", address, exc.code, exc.details
                )
            except ControlPlaneError as exc:
                self.last_error = str(exc)
                started = exc.registered_at if isinstance(exc, _SessionEnded) else None
                log.warning("control plane %s: %s", address, exc)
            finally:
                self.connected_to = None
                self._metrics.connected.set(0)
            if started is not None and time.monotonic() - started >= STABLE_SESSION_SECONDS:
                backoff.reset()
                continue
            delay = backoff.next()
            log.info("reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)

    async def _session(self, address: str) -> float:
        """One stream to one replica; ends by raising why it ended.

        No gRPC operation is awaited directly by this (cancellable) task: grpc.aio cancels the
        whole call when a coroutine awaiting read() or write() is cancelled, and on shutdown
        the call must survive the cancellation to carry our Goodbye. Reads happen in a reader
        task; writes are shielded.
        """
        channel = channels.aio_channel(
            address,
            self._credentials,
            keepalive_ms=KEEPALIVE_MS,
            keepalive_timeout_ms=KEEPALIVE_TIMEOUT_MS,
        )
        try:
            call = _connect(channel)(None, metadata=self._metadata)
            first: asyncio.Future[agent_pb2.ConnectResponse] = (
                asyncio.get_running_loop().create_future()
            )
            reader = asyncio.create_task(self._read(call, first), name="agent-stream-reader")
            self._last_write = None
            self._register_written = False
            try:
                registered_at = await self._register(call, reader, first, address)
                await self._stream(call, reader, registered_at)
            except asyncio.CancelledError:
                # Shutting down: once Register is on the wire, the replica will hold a
                # lease for us; Goodbye releases it now rather than at its expiry.
                if self._register_written:
                    await self._goodbye(call, reader)
                raise
            finally:
                # The reader's own ending (cancelled, or its failure) is not news here; a
                # cancellation of this task while it waits is, and is raised.
                await stopped(reader)
                if not call.done():
                    call.cancel()
        finally:
            await channel.close(grace=None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_write(self, call: _Call, request: agent_pb2.ConnectRequest) -> asyncio.Future[None]:
        write = asyncio.ensure_future(call.write(request))
        # A write left behind by a session that ended fails with its call: nothing to report.
        write.add_done_callback(retrieved)
        self._last_write = write
        return write

    async def _write(self, call: _Call, request: agent_pb2.ConnectRequest) -> None:
        await asyncio.shield(self._start_write(call, request))

    async def _register(
        self,
        call: _Call,
        reader: asyncio.Task[None],
        first: asyncio.Future[agent_pb2.ConnectResponse],
        address: str,
    ) -> float:
        assert self._spec is not None and self._status is not None
        status = self._status
        register = agent_pb2.Register(
            agent_id=self._agent_id,
            backend=self._spec,
            resume_session_id=self.session_id,
            agent_version=self._agent_version,
            status=status,
        )
        try:
            async with asyncio.timeout(self._register_timeout):
                await self._write(call, agent_pb2.ConnectRequest(register=register))
                self._register_written = True
                waiters: set[asyncio.Future[Any]] = {first, reader}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise ControlPlaneUnavailableError(
                f"no Registered within {self._register_timeout:g}s"
            ) from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            raise await _translate(call, exc) from None
        if not first.done():
            await self._reader_ended(call, reader, None)
        response = first.result()
        if response.WhichOneof("message") != "registered":
            raise ControlPlaneUnavailableError(
                f"protocol error: expected Registered, got {response.WhichOneof('message')}"
            )
        reg = response.registered
        previous = self.session_id
        self.session_id = reg.session_id
        self.controlplane_id = reg.controlplane_id
        self.drained = reg.drained
        self.connected_to = address
        self.last_error = ""
        self.sessions += 1
        self._sent = status
        self._heartbeat = float(reg.heartbeat_interval_seconds or 3)
        ttl = float(reg.lease_ttl_seconds or 10)
        # Gone from a silent replica, and registered at the next, while the session's lease
        # (a TTL from the last message the replica took) still runs: it can be resumed.
        self._silence_limit = max(ttl / 2, 2 * self._heartbeat)
        self._register_timeout = min(
            REGISTER_TIMEOUT_SECONDS, max(MIN_REGISTER_TIMEOUT_SECONDS, ttl / 2)
        )
        self._last_heard = time.monotonic()
        self._metrics.connected.set(1)
        log.info(
            "registered backend %s with control plane %s (%s): session %s%s%s",
            self._spec.name,
            reg.controlplane_id or "?",
            address,
            reg.session_id,
            " (resumed)" if reg.resumed else (f" (new; was {previous})" if previous else ""),
            ", drained by an operator" if reg.drained else "",
        )
        return time.monotonic()

    async def _stream(self, call: _Call, reader: asyncio.Task[None], registered_at: float) -> None:
        last_sent = time.monotonic()
        while True:
            if reader.done():
                await self._reader_ended(call, reader, registered_at)
            now = time.monotonic()
            if now - self._last_heard > self._silence_limit:
                raise _SessionEnded(
                    f"no answer from the control plane for {self._silence_limit:g}s",
                    registered_at,
                )
            due = last_sent + self._heartbeat - now
            if self._status != self._sent or due <= 0:
                await self._report(call, reader, registered_at)
                last_sent = time.monotonic()
                continue
            self._changed.clear()
            changed = asyncio.ensure_future(self._changed.wait())
            silence = self._last_heard + self._silence_limit - now
            try:  # until a change, the stream's end, the next heartbeat or too long a silence
                await asyncio.wait(
                    {reader, changed},
                    timeout=max(0.0, min(due, silence)),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()

    async def _report(self, call: _Call, reader: asyncio.Task[None], registered_at: float) -> None:
        assert self._status is not None
        status = self._status
        self._seq += 1
        request = agent_pb2.ConnectRequest(report=agent_pb2.Report(seq=self._seq, status=status))
        write = self._start_write(call, request)
        # A replica that stopped reading leaves the write pending (flow control): wait no
        # longer than the silence allows, as between reports. Waiting does not cancel it.
        while not write.done():
            silence = self._last_heard + self._silence_limit - time.monotonic()
            if silence <= 0:
                raise _SessionEnded(
                    f"no answer from the control plane for {self._silence_limit:g}s "
                    "(a report could not be sent)",
                    registered_at,
                )
            await asyncio.wait(
                {write, reader}, timeout=silence, return_when=asyncio.FIRST_COMPLETED
            )
            if reader.done() and not write.done():
                await self._reader_ended(call, reader, registered_at)
        try:
            write.result()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            if reader.done():
                await self._reader_ended(call, reader, registered_at)
            raise _SessionEnded(str(await _translate(call, exc)), registered_at) from None
        self._sent = status
        self._metrics.reports.inc()

    async def _read(self, call: _Call, first: asyncio.Future[agent_pb2.ConnectResponse]) -> None:
        while True:
            response = await call.read()
            if response is channels.EOF:
                return
            assert isinstance(response, agent_pb2.ConnectResponse)
            self._last_heard = time.monotonic()
            if not first.done():
                first.set_result(response)
                continue
            kind = response.WhichOneof("message")
            if kind == "ack":
                self.acked_seq = max(self.acked_seq, response.ack.seq)
            elif kind == "command":
                self._command(response.command)
            elif kind == "received":
                pass  # heard, but the store is slow: a sign of life (_last_heard), no more
            else:
                log.warning("unexpected %s from the control plane; ignored", kind)

    def _command(self, command: agent_pb2.Command) -> None:
        if command.type == agent_pb2.COMMAND_TYPE_DRAIN:
            self.drained = True
            log.info("drained by the control plane: %s", command.reason or "(no reason)")
        elif command.type == agent_pb2.COMMAND_TYPE_UNDRAIN:
            self.drained = False
            log.info("undrained by the control plane")
        else:
            log.warning("unknown command %s from the control plane; ignored", command.type)

    async def _reader_ended(
        self, call: _Call, reader: asyncio.Task[None], registered_at: float | None
    ) -> NoReturn:
        exc = reader.exception()
        if isinstance(exc, (grpc.aio.AioRpcError, asyncio.InvalidStateError)) or exc is None:
            error = await _translate(call, exc)
        else:
            error = ControlPlaneUnavailableError(f"stream reader failed: {exc!r}")
        if isinstance(error, ControlPlaneRejectedError) or registered_at is None:
            raise error
        raise _SessionEnded(str(error), registered_at)

    async def _goodbye(self, call: _Call, reader: asyncio.Task[None]) -> None:
        """Tell the replica we leave, so it removes the backend now, not at lease expiry."""
        grace = self._config.shutdown_grace_seconds
        try:
            async with asyncio.timeout(grace):
                if self._last_write is not None and not self._last_write.done():
                    await asyncio.wait({self._last_write})
                goodbye = agent_pb2.Goodbye(reason="agent shutting down")
                await self._write(call, agent_pb2.ConnectRequest(goodbye=goodbye))
                await asyncio.shield(call.done_writing())
                # The replica revokes the lease and ends the stream; wait for that.
                await asyncio.shield(reader)
            log.info("said goodbye to the control plane; backend %s left routing", self._name)
        except TimeoutError:
            log.warning("the control plane did not end the stream within %gs of goodbye", grace)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            log.warning("goodbye to the control plane failed: %s", await _translate(call, exc))

    @property
    def _name(self) -> str:
        return self._spec.name if self._spec is not None else "?"


class _SessionEnded(ControlPlaneUnavailableError):
    """A registered session broke; carries when it had registered."""

    def __init__(self, message: str, registered_at: float) -> None:
        super().__init__(message)
        self.registered_at = registered_at


if TYPE_CHECKING:
    _Call = grpc.aio.StreamStreamCall[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse]
    _Connect = grpc.aio.StreamStreamMultiCallable[
        agent_pb2.ConnectRequest, agent_pb2.ConnectResponse
    ]


def _connect(channel: grpc.aio.Channel) -> _Connect:
    return agent_pb2_grpc.AgentServiceStub(channel).Connect


async def _translate(call: _Call, exc: BaseException | None) -> ControlPlaneError:
    """A gRPC ending, as our own error: rejections (our fault) apart from network trouble."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
    else:
        try:
            code = await call.code()
            details = await call.details() or ""
        except asyncio.CancelledError:
            raise
        except Exception:  # the call may be in any state here; we only want a message
            return ControlPlaneUnavailableError("stream ended")
    hint = _REJECTIONS.get(code)
    if hint is not None:
        return ControlPlaneRejectedError(code.name, f"{details} ({hint})" if details else hint)
    if code == grpc.StatusCode.OK:
        return ControlPlaneUnavailableError("the control plane ended the stream")
    return ControlPlaneUnavailableError(f"{code.name}: {details}" if details else code.name)


def _credentials(config: AgentConfig) -> grpc.ChannelCredentials | None:
    try:
        return channel_credentials(
            ca_file=config.controlplane_ca_file,
            cert_file=config.controlplane_cert_file,
            key_file=config.controlplane_key_file,
        )
    except TLSFileError as exc:
        raise AgentConfigError(str(exc)) from None
