"""Following the control plane: one WatchSnapshots stream at a time, rotating on failure.

A replica sends the state it has as soon as a stream opens (after catching up with the edge,
or it ends the stream with UNAVAILABLE); later messages come only with changes, with no
heartbeat between. So only the first one is waited for within a bound: a stream that brings
nothing in FIRST_REPLY_SECONDS is from a replica that cannot serve it, and the next address is
tried. A replica that loses its store later ends its streams itself, and keepalive pings
find a dead connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable

from corral.backoff import Backoff
from corral.config import EdgeConfig
from corral.tls import TLSFileError
from corral.v1 import routing_pb2, types_pb2
from edge.cp_calls import CallFailed, open_channel, tls_context
from edge.errors import EdgeError

log = logging.getLogger(__name__)

WATCH_METHOD = "/corral.v1.RoutingService/WatchSnapshots"
# How long a new stream (snapshots or policy) may bring nothing before the edge leaves it:
# above what a replica takes to catch up with the edge from a store that answers.
FIRST_REPLY_SECONDS = 20.0


class SnapshotSubscriber:
    """Feeds every snapshot from the control plane to on_snapshot, forever."""

    def __init__(
        self,
        config: EdgeConfig,
        edge_id: str,
        *,
        current: Callable[[], tuple[int, str]],
        on_snapshot: Callable[[types_pb2.Snapshot], Awaitable[None]],
        on_connected: Callable[[bool], None],
        on_failed_snapshot: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
        first_reply_within: float = FIRST_REPLY_SECONDS,
    ) -> None:
        self._config = config
        self._edge_id = edge_id
        self._current = current
        self._on_snapshot = on_snapshot
        self._on_connected = on_connected
        self._on_failed_snapshot = on_failed_snapshot
        self._rng = rng or random.Random()
        self._first_reply_within = first_reply_within
        self._credentials = credentials(config)
        self._metadata = auth_metadata(config)

    async def run(self) -> None:
        if not any(self._config.controlplane):
            log.warning("no control-plane address configured; serving the persisted snapshot only")
            return
        await rotate(self._config, self._follow, self._rng)

    async def _follow(self, address: str) -> bool:
        """Stream from one address until it fails; True when it delivered anything."""
        received = False
        channel = open_channel(address, self._credentials, self._config)
        try:
            version, cluster_id = self._current()
            request = routing_pb2.WatchSnapshotsRequest(
                edge_id=self._edge_id,
                last_applied_version=version,
                cluster_id=cluster_id,
                listen_address=self._config.listen,
            )
            replies = channel.stream(
                WATCH_METHOD,
                request,
                routing_pb2.WatchSnapshotsResponse,
                self._metadata,
                first_within=self._first_reply_within,
            )
            async for response in replies:
                if not received:
                    received = True
                    self._on_connected(True)
                    log.info("following snapshots from %s", address)
                await self._apply(response.snapshot)
            log.info("snapshot stream from %s ended", address)
        except CallFailed as exc:
            log.warning("snapshot stream from %s failed: %s %s", address, exc.code, exc.details)
        finally:
            if received:
                self._on_connected(False)
            channel.close()
        return received

    async def _apply(self, snapshot: types_pb2.Snapshot) -> None:
        """One snapshot to on_snapshot; a failure to apply it is logged and counted, and the
        stream goes on (the next snapshot carries the whole state again)."""
        try:
            await self._on_snapshot(snapshot)
        except Exception:
            self._on_failed_snapshot()
            log.exception("could not apply snapshot %d; waiting for the next", snapshot.version)


async def rotate(
    config: EdgeConfig, follow: Callable[[str], Awaitable[bool]], rng: random.Random
) -> None:
    """Follows one control-plane address at a time, forever, starting at a random one:
    follow(address) streams until the stream ends and says whether it delivered anything."""
    addresses = [a for a in config.controlplane if a]
    if not addresses:
        return
    index = rng.randrange(len(addresses))
    # 1 s, x1.6 each time, +-20 % jitter, capped (gRPC's reconnect rules).
    backoff = Backoff(rng=rng)
    while True:
        received = await follow(addresses[index % len(addresses)])
        index += 1
        if received:
            # The stream worked (it may have ended for max connection age): reconnect at
            # once, to the next address; failures from there on back off.
            backoff.reset()
            continue
        await asyncio.sleep(backoff.next())


def auth_metadata(config: EdgeConfig) -> tuple[tuple[str, str], ...]:
    """The bearer token every call to the control plane carries, when one is configured."""
    token = config.controlplane_token
    return (("authorization", f"Bearer {token.reveal()}"),) if token is not None else ()


def credentials(config: EdgeConfig) -> ssl.SSLContext | None:
    """TLS to the control plane as configured (None: plaintext); a bad file is an EdgeError."""
    try:
        return tls_context(
            ca_file=config.controlplane_ca_file,
            cert_file=config.controlplane_cert_file,
            key_file=config.controlplane_key_file,
        )
    except TLSFileError as exc:
        raise EdgeError(str(exc)) from None
