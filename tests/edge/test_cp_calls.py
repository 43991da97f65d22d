"""The edge's gRPC calls to the control plane (edge/cp_calls.py, grpclib) against a real
grpcio server: TLS and mutual TLS, tokens, error statuses, deadlines, dead connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from corral.tls import TLSFileError
from corral.v1 import routing_pb2, routing_pb2_grpc, traffic_pb2, types_pb2
from edge.cp_calls import CallFailed, ControlPlaneChannel, tls_context
from tests.support.etcd import TlsFiles, make_tls_files
from tests.support.net import free_port

WATCH = "/corral.v1.RoutingService/WatchSnapshots"
REPORT = "/corral.v1.RoutingService/ReportTraffic"
TOKEN = "edge-token-for-cp-calls"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


class Routing(routing_pb2_grpc.RoutingServiceServicer):
    """Three snapshots to a caller with the token, then the stream ends; ReportTraffic
    acknowledges what it is sent, or never answers while `hold` is set."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.hold = False
        self.keep_open = False
        self.released = asyncio.Event()
        self.holding = asyncio.Event()  # a ReportTraffic is being held

    async def WatchSnapshots(
        self, request: routing_pb2.WatchSnapshotsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[routing_pb2.WatchSnapshotsResponse]:
        metadata = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        self.metadata.append(metadata)
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad edge token")
        for version in (1, 2, 3):
            snapshot = types_pb2.Snapshot(version=version, cluster_id=request.edge_id)
            yield routing_pb2.WatchSnapshotsResponse(snapshot=snapshot)
        if self.keep_open:
            await self.released.wait()

    async def ReportTraffic(
        self, request: traffic_pb2.ReportTrafficRequest, context: aio.ServicerContext
    ) -> traffic_pb2.ReportTrafficResponse:
        if self.hold:
            self.holding.set()
            await self.released.wait()
        return traffic_pb2.ReportTrafficResponse(acked_seq=request.slices[-1].seq)


@contextlib.asynccontextmanager
async def serving(
    tls: TlsFiles | None, *, mutual: bool = False, options: tuple[tuple[str, int], ...] = ()
) -> AsyncIterator[tuple[str, Routing]]:
    """A grpcio server with RoutingService on a free port, plaintext or TLS."""
    routing = Routing()
    server = aio.server(options=options)
    routing_pb2_grpc.add_RoutingServiceServicer_to_server(routing, server)
    address = f"127.0.0.1:{free_port()}"
    if tls is None:
        server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
            root_certificates=tls.ca.read_bytes() if mutual else None,
            require_client_auth=mutual,
        )
        server.add_secure_port(address, credentials)
    await server.start()
    try:
        yield address, routing
    finally:
        routing.released.set()
        await server.stop(grace=None)


async def watch(channel: ControlPlaneChannel, token: str = TOKEN) -> list[int]:
    request = routing_pb2.WatchSnapshotsRequest(edge_id="e1")
    metadata = [("authorization", f"Bearer {token}")]
    try:
        stream = channel.stream(WATCH, request, routing_pb2.WatchSnapshotsResponse, metadata)
        return [reply.snapshot.version async for reply in stream]
    finally:
        channel.close()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_stream_over_tls_carries_the_token(tmp_path: Path, mutual: bool) -> None:
    """A server stream over mutual TLS delivers every reply in order; the server sees the token."""
    tls = make_tls_files(tmp_path)
    context = tls_context(
        ca_file=str(tls.ca),
        cert_file=str(tls.client_cert) if mutual else None,
        key_file=str(tls.client_key) if mutual else None,
    )
    async with serving(tls, mutual=mutual) as (address, routing):
        assert await watch(ControlPlaneChannel(address, context)) == [1, 2, 3]
    assert routing.metadata[0]["authorization"] == f"Bearer {TOKEN}"


async def test_tls_refusals_are_unavailable(tmp_path: Path) -> None:
    """Foreign-CA server cert, no client cert in mTLS, plaintext to TLS: UNAVAILABLE, no reply."""
    tls = make_tls_files(tmp_path / "ours")
    other = make_tls_files(tmp_path / "other")
    async with serving(tls, mutual=True) as (address, routing):
        for context in (
            tls_context(
                ca_file=str(other.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key)
            ),
            tls_context(ca_file=str(tls.ca), cert_file=None, key_file=None),
            None,
        ):
            with pytest.raises(CallFailed) as caught:
                await watch(ControlPlaneChannel(address, context))
            assert caught.value.code == "UNAVAILABLE"
        assert routing.metadata == []


async def test_status_and_refused_connection() -> None:
    """The server's status comes through by name; a closed port is UNAVAILABLE."""
    async with serving(None) as (address, _):
        with pytest.raises(CallFailed) as caught:
            await watch(ControlPlaneChannel(address, None), token="wrong")
        assert (caught.value.code, caught.value.details) == ("UNAUTHENTICATED", "bad edge token")
    with pytest.raises(CallFailed) as refused:
        await watch(ControlPlaneChannel(f"127.0.0.1:{free_port()}", None))
    assert refused.value.code == "UNAVAILABLE"


async def test_unary_answer_and_deadline() -> None:
    """A unary call gets its reply; one unanswered is DEADLINE_EXCEEDED, the channel serves on."""
    request = traffic_pb2.ReportTrafficRequest(
        edge_id="e1", slices=[traffic_pb2.TrafficSlice(seq=7)]
    )
    async with serving(None) as (address, routing):
        channel = ControlPlaneChannel(address, None)
        try:
            answer = await channel.unary(REPORT, request, traffic_pb2.ReportTrafficResponse, (), 10)
            assert answer.acked_seq == 7
            routing.hold = True
            with pytest.raises(CallFailed) as caught:
                await channel.unary(REPORT, request, traffic_pb2.ReportTrafficResponse, (), 0.3)
            assert caught.value.code == "DEADLINE_EXCEEDED"
            routing.hold = False
            answer = await channel.unary(REPORT, request, traffic_pb2.ReportTrafficResponse, (), 10)
            assert answer.acked_seq == 7
        finally:
            channel.close()


async def test_keepalive_ends_a_stream_to_a_frozen_peer() -> None:
    """A peer that accepts then goes silent fails the stream UNAVAILABLE on an unanswered ping."""
    accepted = asyncio.Event()

    async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read(1 << 20)  # the preface and request, never an answer
        await asyncio.Event().wait()

    server = await asyncio.start_server(frozen, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = ControlPlaneChannel(
        f"127.0.0.1:{port}", None, keepalive_seconds=0.3, keepalive_timeout_seconds=0.3
    )
    try:
        async with asyncio.timeout(20):
            with pytest.raises(CallFailed) as caught:
                await watch(channel)
        assert caught.value.code == "UNAVAILABLE"
        assert accepted.is_set()
    finally:
        server.close()


class FreezableRelay:
    """A TCP relay to `target` that counts the client's HTTP/2 PING frames and, once frozen,
    forwards nothing more either way (a cable pulled without a FIN or RST)."""

    PREFACE = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

    def __init__(self, target: str) -> None:
        self.target = target
        self.pings = 0
        self.pinged = asyncio.Condition()
        self.frozen = False
        self._parsed = b""
        self._skip = self.PREFACE

    def _count_pings(self, data: bytes) -> None:
        """Walks the client's frame headers (9 bytes: length, type, flags, stream id)."""
        buffer = self._parsed + data
        at = 0
        while True:
            if self._skip:
                taken = min(self._skip, len(buffer) - at)
                at += taken
                self._skip -= taken
                if self._skip:
                    break
            if len(buffer) - at < 9:
                break
            length = int.from_bytes(buffer[at : at + 3], "big")
            if buffer[at + 3] == 0x6 and not buffer[at + 4] & 0x1:  # PING, not an ACK
                self.pings += 1
            at += 9
            self._skip = length
        self._parsed = buffer[at:]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        while data := await reader.read(1 << 16):
            if self.frozen:
                continue
            if upstream:
                self._count_pings(data)
                async with self.pinged:
                    self.pinged.notify_all()
            writer.write(data)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(reader, up_writer, upstream=True))
                group.create_task(self._pipe(up_reader, writer, upstream=False))
        finally:
            up_writer.close()
            writer.close()


async def test_keepalive_keeps_pinging_after_the_first_ping() -> None:
    """Pings go on every keepalive interval: a connection dying long after fails UNAVAILABLE."""
    permissive = (
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 50),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
    )
    async with serving(None, options=permissive) as (address, routing):
        routing.keep_open = True
        relay = FreezableRelay(address)
        server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        channel = ControlPlaneChannel(
            f"127.0.0.1:{port}", None, keepalive_seconds=0.2, keepalive_timeout_seconds=0.5
        )
        try:
            async with asyncio.timeout(20):
                watching = asyncio.create_task(watch(channel))
                async with relay.pinged:
                    await relay.pinged.wait_for(lambda: relay.pings >= 4)
                assert not watching.done()  # answered pings keep the stream alive
                relay.frozen = True
                with pytest.raises(CallFailed) as caught:
                    await watching
            assert caught.value.code == "UNAVAILABLE"
        finally:
            server.close()


async def test_a_call_on_a_connection_just_closed_is_unavailable() -> None:
    """A call between grpclib closing a connection and its loss is UNAVAILABLE, stream or unary."""
    # The calls' own tasks (_unary, _replies) run here: the public methods start them a loop
    # turn later, when the loss is reported already; a call task that was due to run when the
    # keepalive closed the connection still meets this.
    async with serving(None) as (address, _routing):
        channel = ControlPlaneChannel(address, None)
        request = traffic_pb2.ReportTrafficRequest(slices=[traffic_pb2.TrafficSlice(seq=1)])
        try:
            await channel.unary(REPORT, request, traffic_pb2.ReportTrafficResponse, (), 10)
            protocol = channel._channel._protocol
            assert protocol is not None
            protocol.connection.close()  # what grpclib's keepalive timeout does
            with pytest.raises(CallFailed) as caught:
                await channel._unary(REPORT, request, traffic_pb2.ReportTrafficResponse, (), 10)
            assert caught.value.code == "UNAVAILABLE"
        finally:
            channel.close()
        channel = ControlPlaneChannel(address, None)
        try:
            await channel.unary(REPORT, request, traffic_pb2.ReportTrafficResponse, (), 10)
            protocol = channel._channel._protocol
            assert protocol is not None
            protocol.connection.close()
            watching = routing_pb2.WatchSnapshotsRequest(edge_id="e1")
            replies = channel._replies(WATCH, watching, routing_pb2.WatchSnapshotsResponse, AUTH)
            with pytest.raises(CallFailed) as caught:
                await anext(replies)
            assert caught.value.code == "UNAVAILABLE"
        finally:
            channel.close()


def test_tls_files_are_checked() -> None:
    """No CA and no cert is plaintext; a cert without key or unreadable file is a TLSFileError."""
    assert tls_context(ca_file=None, cert_file=None, key_file=None) is None
    with pytest.raises(TLSFileError, match="go together"):
        tls_context(ca_file=None, cert_file="/nonexistent.crt", key_file=None)
    with pytest.raises(TLSFileError, match=r"cannot read /nonexistent-ca\.pem"):
        tls_context(ca_file="/nonexistent-ca.pem", cert_file=None, key_file=None)


async def test_a_cancellation_that_comes_with_the_connections_loss_still_cancels() -> None:
    """The caller's cancellation ends a call whose connection is lost at the same moment."""
    # grpclib wakes a call on a lost connection by cancelling the task inside it, and then
    # raises the loss in place of any cancellation: `corral up` stopping its control plane
    # and its edge together left the edge's subscriber retrying for the whole shutdown grace.
    request = traffic_pb2.ReportTrafficRequest(slices=[traffic_pb2.TrafficSlice(seq=1)])
    async with serving(None) as (address, routing):
        routing.keep_open = True
        channel = ControlPlaneChannel(address, None)
        three = asyncio.Event()

        async def follow() -> None:
            watching = routing_pb2.WatchSnapshotsRequest(edge_id="e1")
            replies = channel.stream(WATCH, watching, routing_pb2.WatchSnapshotsResponse, AUTH)
            async for reply in replies:
                if reply.snapshot.version == 3:
                    three.set()

        try:
            following = asyncio.create_task(follow())
            await three.wait()  # the stream is open, waiting for a fourth snapshot
            protocol = channel._channel._protocol
            assert protocol is not None
            protocol.connection_lost(None)  # the loss, as the loop reports it
            following.cancel()  # and the caller's cancellation, before the call wakes up
            await asyncio.wait([following])
            assert following.cancelled()
        finally:
            channel.close()
        routing.hold = True  # a unary call the server never answers: it waits for the loss
        channel = ControlPlaneChannel(address, None)
        try:
            reporting = asyncio.create_task(
                channel.unary(REPORT, request, traffic_pb2.ReportTrafficResponse, (), 30)
            )
            await routing.holding.wait()
            protocol = channel._channel._protocol
            assert protocol is not None
            protocol.connection_lost(None)
            reporting.cancel()
            await asyncio.wait([reporting])
            assert reporting.cancelled()
        finally:
            channel.close()
