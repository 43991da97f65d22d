"""The edge's calls to the control plane (WatchSnapshots, WatchPolicy, ReportTraffic), over
grpclib: a pure-Python gRPC client on the edge's own event loop.

grpcio's C core costs every process that loads it ~15 MiB of resident memory (its 17 MB
shared library, its own threads and their heaps); an edge makes three calls, so it keeps
that memory for serving. The control plane, agents and the command line keep grpcio. The
rules are the same as corral/channels.py's: keepalive pings find a dead connection within
keepalive + timeout, also between calls; no transparent retries (the caller moves between
control-plane replicas itself); TLS when a CA or a client certificate is configured.

Every call runs in a task of its own, apart from its caller's. grpclib wakes a call whose
connection is lost by cancelling the task inside the call, and then raises the loss in place
of the CancelledError: a cancellation of the caller arriving at that moment (`corral up`
stopping its control plane and its edge together) would become an UNAVAILABLE to retry, and
the caller would go on. Apart, the caller's cancellation is always the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Sequence
from typing import Any, Final, TypeVar

import h2.exceptions
import hpack.hpack
import hpack.table
from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from corral.config import EdgeConfig
from corral.keepalive import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS
from corral.tasks import stopped
from corral.tls import TLSFileError, read_pem

# hpack logs every header it encodes at DEBUG, the bearer token included: never that low.
for _module in (hpack.hpack, hpack.table):
    _module.log.setLevel(logging.INFO)

Reply = TypeVar("Reply", bound=Message)
Metadata = Sequence[tuple[str, str]]

# A control plane that does not accept the connection within this is UNAVAILABLE (grpcio's
# minimum connect timeout).
CONNECT_TIMEOUT_SECONDS = 20.0
# What a broken transport looks like from grpclib and h2: the call failed as UNAVAILABLE.
_TRANSPORT_ERRORS = (
    OSError,
    StreamTerminatedError,
    ProtocolError,
    h2.exceptions.H2Error,
    ssl.SSLError,
)


def _closed_connection(exc: AttributeError) -> bool:
    """grpclib's Connection.close (a keepalive timeout) drops its transport before the event
    loop reports the connection lost; a call started in between fails with this
    AttributeError instead of a transport error."""
    return exc.name == "_transport"


async def _apart(work: Coroutine[Any, Any, Reply]) -> Reply:
    """`work` in a task of its own: its result or exception; the caller's cancellation stops
    it and is raised as the caller's."""
    call = asyncio.create_task(work)
    try:
        await asyncio.wait([call])
    except asyncio.CancelledError:
        await stopped(call)  # a call that failed as it was stopped is not an error
        raise
    return call.result()


# A stream's task ended without saying how (grpclib cancelled it outside a call).
_GONE: Final = object()


class CallFailed(Exception):
    """A call that did not complete: `code` is the gRPC status name (UNAVAILABLE for a
    connection that failed or broke, DEADLINE_EXCEEDED for a call out of time)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code} {details}".strip())
        self.code = code
        self.details = details


def tls_context(
    *, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext | None:
    """TLS when a CA or a client certificate is configured (no CA: the system's roots), with
    the server's certificate always verified; None for plaintext. A client certificate makes
    it mutual TLS. The same rules as corral.tls.channel_credentials."""
    if not (ca_file or cert_file):
        return None
    if bool(cert_file) != bool(key_file):
        raise TLSFileError("a client certificate and its key go together (cert and key files)")
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        if ca_file:
            context.load_verify_locations(cadata=read_pem(ca_file).decode("ascii"))
        if cert_file and key_file:
            read_pem(cert_file), read_pem(key_file)  # a clear error for a missing file
            context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, ValueError) as exc:
        raise TLSFileError(f"bad certificate or key: {exc}") from None
    return context


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class ControlPlaneChannel:
    """One HTTP/2 connection to one control-plane address, opened on the first call."""

    def __init__(
        self,
        address: str,
        tls: ssl.SSLContext | None,
        *,
        keepalive_seconds: float = KEEPALIVE_MS / 1000,
        keepalive_timeout_seconds: float = KEEPALIVE_TIMEOUT_MS / 1000,
    ) -> None:
        host, port = _host_port(address)
        self.address = address
        self._channel = Channel(
            host,
            port,
            ssl=tls,
            config=Configuration(
                _keepalive_time=keepalive_seconds,
                _keepalive_timeout=keepalive_timeout_seconds,
                _keepalive_permit_without_calls=True,
                _http2_max_pings_without_data=0,
                # grpclib's default (300 s) sends one ping, then none for five minutes: a
                # connection that dies after the first ping would stay "connected" that long.
                _http2_min_sent_ping_interval_without_data=keepalive_seconds / 2,
            ),
        )

    async def stream(
        self,
        method: str,
        request: Message,
        reply_type: type[Reply],
        metadata: Metadata,
        *,
        first_within: float | None = None,
    ) -> AsyncIterator[Reply]:
        """A server-streaming call: each reply as it comes; raises CallFailed when the call
        ends with an error status or the connection fails, or (DEADLINE_EXCEEDED) when
        first_within seconds pass without its first reply (or its end)."""
        # The call's task hands over one reply at a time (it reads the next once this one is
        # taken), then None for the end or the exception that ended it.
        out: asyncio.Queue[object] = asyncio.Queue()
        call = asyncio.create_task(self._pump(method, request, reply_type, metadata, out))
        call.add_done_callback(lambda done: out.put_nowait(_GONE) if done.cancelled() else None)
        try:
            within = first_within
            while True:
                if within is None:
                    item = await out.get()
                else:
                    try:
                        async with asyncio.timeout(within):
                            item = await out.get()
                    except TimeoutError:
                        raise CallFailed(
                            "DEADLINE_EXCEEDED", f"nothing came within {within:g} s"
                        ) from None
                    within = None
                out.task_done()
                if item is None:
                    return
                if item is _GONE:
                    raise CallFailed("UNAVAILABLE", "the call was cancelled")
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]  # one of the call's replies
        finally:
            await stopped(call)

    async def _pump(
        self,
        method: str,
        request: Message,
        reply_type: type[Reply],
        metadata: Metadata,
        out: asyncio.Queue[object],
    ) -> None:
        """The stream's call, in its own task: each reply into `out` once the one before was
        taken, then None, or the exception that ended the call."""
        try:
            # Closed here, stopped or not: the call's stream is ended in this task.
            async with contextlib.aclosing(
                self._replies(method, request, reply_type, metadata)
            ) as replies:
                async for reply in replies:
                    out.put_nowait(reply)
                    await out.join()
        except Exception as exc:  # raised by the caller (stream), in its task
            out.put_nowait(exc)
        else:
            out.put_nowait(None)

    async def _replies(
        self, method: str, request: Message, reply_type: type[Reply], metadata: Metadata
    ) -> AsyncGenerator[Reply, None]:
        """The stream's replies, with grpclib's errors made CallFailed."""
        try:
            async with self._channel.request(
                method, Cardinality.UNARY_STREAM, type(request), reply_type, metadata=metadata
            ) as call:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    await call.send_request()
                await call.send_message(request, end=True)
                async for reply in call:
                    yield reply
        except GRPCError as exc:
            raise CallFailed(exc.status.name, exc.message or "") from None
        except TimeoutError:
            raise CallFailed("UNAVAILABLE", "no connection within the connect timeout") from None
        except _TRANSPORT_ERRORS as exc:
            raise CallFailed("UNAVAILABLE", str(exc) or type(exc).__name__) from None
        except AttributeError as exc:
            if not _closed_connection(exc):
                raise
            raise CallFailed("UNAVAILABLE", "the connection was closed") from None

    async def unary(
        self,
        method: str,
        request: Message,
        reply_type: type[Reply],
        metadata: Metadata,
        within: float,
    ) -> Reply:
        """A unary call answered within `within` seconds; raises CallFailed otherwise."""
        return await _apart(self._unary(method, request, reply_type, metadata, within))

    async def _unary(
        self,
        method: str,
        request: Message,
        reply_type: type[Reply],
        metadata: Metadata,
        within: float,
    ) -> Reply:
        """The unary call, in its own task, with grpclib's errors made CallFailed."""
        try:
            async with asyncio.timeout(within):
                async with self._channel.request(
                    method,
                    Cardinality.UNARY_UNARY,
                    type(request),
                    reply_type,
                    timeout=within,  # the server sees the deadline too (grpc-timeout)
                    metadata=metadata,
                ) as call:
                    await call.send_message(request, end=True)
                    reply = await call.recv_message()
        except GRPCError as exc:
            raise CallFailed(exc.status.name, exc.message or "") from None
        except TimeoutError:
            raise CallFailed("DEADLINE_EXCEEDED", f"no answer within {within:g} s") from None
        except _TRANSPORT_ERRORS as exc:
            raise CallFailed("UNAVAILABLE", str(exc) or type(exc).__name__) from None
        except AttributeError as exc:
            if not _closed_connection(exc):
                raise
            raise CallFailed("UNAVAILABLE", "the connection was closed") from None
        if reply is None:
            raise CallFailed("INTERNAL", "the call ended without a reply")
        return reply

    def close(self) -> None:
        self._channel.close()


def open_channel(
    address: str, tls: ssl.SSLContext | None, config: EdgeConfig
) -> ControlPlaneChannel:
    """A channel to one control-plane address, with the edge's keepalive settings."""
    return ControlPlaneChannel(
        address,
        tls,
        keepalive_seconds=config.controlplane_keepalive_seconds,
        keepalive_timeout_seconds=config.controlplane_keepalive_timeout_seconds,
    )
