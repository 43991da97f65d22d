"""Connections to an etcd cluster: one grpc.aio channel per endpoint, failover between them.

The generated etcd v3 stubs come from `aetcd.rpc`; the channels are ours, so we control TLS,
several endpoints, reconnect backoff and keepalive (see docs/DECISIONS.md, "etcd client").
gRPC errors are translated into StoreError subclasses here and nowhere else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from controlplane.store.base import (
    KeyValue,
    LeaseNotFoundError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
)

# Codes after which another endpoint may answer: the member is down, cut off, or lost its
# leader ("etcdserver: no leader" and "leader changed" are UNAVAILABLE).
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# Streams carry this so a member that lost its leader ends them instead of going silent.
REQUIRE_LEADER = (("hasleader", "true"),)

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Notice a dead peer on a quiet connection; etcd permits pings every 5 s without streams.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A restarted member is found again quickly (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # Listing a large prefix can exceed gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]


def translate(exc: grpc.aio.AioRpcError, what: str) -> StoreError:
    """One gRPC error from etcd as the store error a caller can act on."""
    code = exc.code()
    details = exc.details() or ""
    if code in RETRYABLE_CODES:
        return StoreUnavailableError(f"{what}: etcd unavailable ({code.name}: {details})")
    if code is grpc.StatusCode.NOT_FOUND and "lease" in details:
        return LeaseNotFoundError(f"{what}: {details}")
    return StoreError(f"{what}: etcd error {code.name}: {details}")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end covering every key that starts with prefix (etcd's convention)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    # Empty prefix (or all 0xff): "\0" as range_end means every key >= key.
    return b"\0"


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks we own and wait until every one has ended; a task's own error is raised.

    Cancelled meanwhile (or already, as in a `finally` of a cancelled task), it still waits
    for all of them, then lets the cancellation propagate: no task is left running unowned.
    """
    for task in tasks:
        task.cancel()
    pending: set[asyncio.Task[Any]] = set(tasks)
    interrupted = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    if interrupted:
        raise asyncio.CancelledError


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    target: str  # host:port for gRPC
    tls: bool

    @classmethod
    def parse(cls, url: str, *, tls_default: bool) -> Endpoint:
        if "://" not in url:
            return cls(url=url, target=url, tls=tls_default)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise StoreError(f"bad etcd endpoint {url!r}: expected http(s)://host:port")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(url=url, target=f"{host}:{parts.port}", tls=parts.scheme == "https")


class Stubs:
    """The etcd services over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)


class EndpointPool:
    """Channels to every endpoint, lazily opened, and which one calls go to now."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        ca_file: str | None,
        cert_file: str | None,
        key_file: str | None,
    ) -> None:
        if not endpoints:
            raise StoreError("no etcd endpoints given")
        self.endpoints = endpoints
        self._credentials: grpc.ChannelCredentials | None = None
        if any(e.tls for e in endpoints):
            try:
                self._credentials = grpc.ssl_channel_credentials(
                    root_certificates=Path(ca_file).read_bytes() if ca_file else None,
                    private_key=Path(key_file).read_bytes() if key_file else None,
                    certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
                )
            except OSError as exc:
                raise StoreError(f"cannot read an etcd TLS file: {exc}") from exc
        self._stubs: dict[int, Stubs] = {}
        self._current = 0
        self.closed = False

    @property
    def current(self) -> int:
        return self._current

    def rotate(self, failed: int) -> None:
        """Move on from endpoint index `failed` (unless someone already did)."""
        if self._current == failed:
            self._current = (failed + 1) % len(self.endpoints)

    def stubs(self, index: int) -> Stubs:
        if self.closed:
            raise StoreClosedError("etcd store closed")
        stubs = self._stubs.get(index)
        if stubs is None:
            endpoint = self.endpoints[index]
            if endpoint.tls:
                assert self._credentials is not None
                channel = grpc.aio.secure_channel(
                    endpoint.target, self._credentials, options=_CHANNEL_OPTIONS
                )
            else:
                channel = grpc.aio.insecure_channel(endpoint.target, options=_CHANNEL_OPTIONS)
            stubs = self._stubs[index] = Stubs(channel)
        return stubs

    async def ready(self, index: int, within: float) -> Stubs | None:
        """The stubs of endpoint `index` once its channel is connected.

        None when it fails to connect (a refused connection fails at once) or does not
        connect within `within` seconds, so the caller can move on to the next endpoint.
        """
        stubs = self.stubs(index)
        channel = stubs.channel
        try:
            async with asyncio.timeout(within):
                while True:
                    state = channel.get_state(try_to_connect=True)
                    if state is grpc.ChannelConnectivity.READY:
                        return stubs
                    if state in (
                        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                        grpc.ChannelConnectivity.SHUTDOWN,
                    ):
                        return None
                    await channel.wait_for_state_change(state)
        except TimeoutError:
            return None

    async def close_channels(self) -> None:
        """Close every open channel; later calls open new ones."""
        stubs, self._stubs = list(self._stubs.values()), {}
        for s in stubs:
            await s.channel.close(grace=None)

    async def close(self) -> None:
        self.closed = True
        await self.close_channels()


def key_value(kv: Any) -> KeyValue:
    """A KeyValue from an etcd mvccpb.KeyValue."""
    return KeyValue(
        key=kv.key,
        value=kv.value,
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        lease=kv.lease,
    )
