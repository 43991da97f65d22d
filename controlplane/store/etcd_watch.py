"""Watching etcd: a prefix's events across reconnects and failover, and the revision of the
last event up to a given one (the catch-up check of controlplane/state.py). Split from
controlplane/store/etcd.py; EtcdStore's methods of the same names call these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aetcd import rpc

from controlplane.store.base import (
    CompactedError,
    EventType,
    HistoryRewoundError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    WatchBatch,
    WatchEvent,
)
from controlplane.store.etcd_conn import (
    REQUIRE_LEADER,
    RETRYABLE_CODES,
    EndpointPool,
    key_value,
    prefix_end,
    translate,
)
from corral.backoff import Backoff

log = logging.getLogger(__name__)

_PUT = rpc.Event.EventType.Value("PUT")
# What a stream's read() returns at the end (missing from the grpc type stubs).
_EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009 - the stubs lack it; getattr keeps mypy quiet
_PROGRESS_REQUEST = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())


def _event_type(kind: int) -> EventType:
    return EventType.PUT if kind == _PUT else EventType.DELETE


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a background read's outcome as seen (we act on it elsewhere, or not at all)."""
    if not future.cancelled():
        future.exception()


async def watch_prefix(
    pool: EndpointPool,
    prefix: bytes,
    start_revision: int,
    *,
    connect_timeout: float,
    probe_interval: float,
    stall_timeout: float,
    revision: Callable[[], Awaitable[int]],
) -> AsyncIterator[WatchBatch]:
    """Watch batches under prefix from start_revision (0: from now on), across reconnects:
    a stream that breaks or goes quiet past a progress probe resumes on the next endpoint
    after the last delivered revision. A watch created on a member behind that point asks
    `revision` (a linearizable read: the cluster's revision) whether the cluster is: then
    its history went back (restored from a backup), and HistoryRewoundError is raised."""
    create = rpc.WatchCreateRequest(key=prefix or b"\0", range_end=prefix_end(prefix))
    next_revision = start_revision
    # The first retry at once: most breaks are one member going away.
    backoff = Backoff(first=0.05, cap=5.0)
    while True:
        index = pool.current
        url = pool.endpoints[index].url
        stubs = await pool.ready(index, connect_timeout)
        if stubs is None:
            pool.rotate(index)
            await asyncio.sleep(backoff.next())
            continue
        create.start_revision = next_revision
        call = stubs.watch.Watch(metadata=REQUIRE_LEADER)
        reading: asyncio.Future[Any] | None = None
        probing = False
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                if reading is None:
                    reading = asyncio.ensure_future(call.read())
                    reading.add_done_callback(_retrieve)
                wait = stall_timeout if probing else probe_interval
                done, _ = await asyncio.wait({reading}, timeout=wait)
                if not done:
                    if probing:
                        log.warning("etcd watch on %s stopped answering", url)
                        break
                    # Quiet for a while: ask for a progress report to prove it is alive.
                    await call.write(_PROGRESS_REQUEST)
                    probing = True
                    continue
                response, reading, probing = reading.result(), None, False
                if response is _EOF:
                    log.warning("etcd ended the watch stream on %s", url)
                    break
                if response.compact_revision > 0:
                    raise CompactedError(response.compact_revision)
                if response.canceled:
                    log.warning("etcd cancelled a watch: %s", response.cancel_reason)
                    break
                if response.created:
                    backoff.reset()
                    if next_revision <= 0:
                        # "From now on": pin "now", so a reconnect misses nothing.
                        next_revision = int(response.header.revision) + 1
                    elif response.header.revision < next_revision - 1:
                        # This member is behind what we had: it may lag the leader, or the
                        # cluster's history went back. Only the latter holds for the cluster.
                        cluster_revision = await revision()
                        if cluster_revision < next_revision - 1:
                            raise HistoryRewoundError(cluster_revision, next_revision - 1)
                if not response.events:
                    continue
                events = [
                    WatchEvent(
                        EventType.PUT if e.type == _PUT else EventType.DELETE, key_value(e.kv)
                    )
                    for e in response.events
                ]
                next_revision = events[-1].kv.mod_revision + 1
                yield WatchBatch(events=events, revision=int(response.header.revision))
        except grpc.aio.AioRpcError as exc:
            if pool.closed:
                raise StoreClosedError("etcd store closed") from None
            if exc.code() not in RETRYABLE_CODES | {grpc.StatusCode.CANCELLED}:
                raise translate(exc, "watch") from None
            log.warning("etcd watch on %s broke (%s %s)", url, exc.code().name, exc.details())
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if pool.closed and current is not None and not current.cancelling():
                raise StoreClosedError("etcd store closed") from None
            raise
        finally:
            call.cancel()
            if reading is not None:
                reading.cancel()
        if pool.closed:
            raise StoreClosedError("etcd store closed")
        log.info("resuming the watch on %s at revision %d", prefix, next_revision)
        pool.rotate(index)
        await asyncio.sleep(backoff.next())


async def last_event_revision(
    pool: EndpointPool,
    prefix: bytes,
    start_revision: int,
    revision: int,
    *,
    connect_timeout: float,
    request_timeout: float,
    put: Callable[[bytes, bytes], Awaitable[int]],
) -> int:
    """The revision of the last event under prefix in (start_revision, revision]; 0: none."""
    # A watch from start_revision over the prefix and the one key just past it (the
    # marker). Once the watch is created we write the marker: its event comes after
    # every earlier one, so when it (or any event past `revision`) arrives, all events
    # up to `revision` have. (etcd 3.5's progress notices cannot say that: before 3.5.8
    # one may come before the history is delivered.)
    if start_revision > revision:
        return 0
    marker = prefix_end(prefix)
    create = rpc.WatchCreateRequest(
        key=prefix or b"\0", range_end=marker + b"\0", start_revision=start_revision
    )
    index = pool.current
    stubs = await pool.ready(index, connect_timeout)
    if stubs is None:
        pool.rotate(index)
        raise StoreUnavailableError("last_event_revision: no etcd endpoint answered")
    call = stubs.watch.Watch(metadata=REQUIRE_LEADER)
    last = 0
    try:
        async with asyncio.timeout(request_timeout):
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is _EOF:
                    raise StoreUnavailableError("last_event_revision: etcd ended the watch")
                if response.compact_revision > 0:
                    raise CompactedError(response.compact_revision)
                if response.canceled:
                    raise StoreError(f"last_event_revision: {response.cancel_reason}")
                if response.created:
                    await put(marker, b"")
                    continue
                for event in response.events:
                    if event.kv.mod_revision > revision:
                        return last
                    if event.kv.key.startswith(prefix):
                        last = max(last, int(event.kv.mod_revision))
    except TimeoutError:
        raise StoreUnavailableError("last_event_revision: etcd did not answer") from None
    except grpc.aio.AioRpcError as exc:
        if pool.closed:
            raise StoreClosedError("etcd store closed") from None
        raise translate(exc, "last_event_revision") from None
    finally:
        call.cancel()
