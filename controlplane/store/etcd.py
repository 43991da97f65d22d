"""The etcd v3 store: several control-plane replicas share one etcd cluster through it.

Our own grpc.aio channels with the generated stubs from `aetcd.rpc` (docs/DECISIONS.md,
"etcd client"). Calls go to one endpoint at a time and fail over to the next when it stops
answering; leases are kept alive over one stream (controlplane/store/etcd_lease.py); watches
reconnect and resume after the last delivered revision (controlplane/store/etcd_watch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from controlplane.store import etcd_watch
from controlplane.store.base import (
    MAX_TXN_WRITES,
    KeyValue,
    LeaseNotFoundError,
    Store,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    WatchBatch,
    Write,
    WriteOutcome,
)
from controlplane.store.etcd_conn import (
    RETRYABLE_CODES,
    Endpoint,
    EndpointPool,
    Stubs,
    key_value,
    prefix_end,
    translate,
)
from controlplane.store.etcd_lease import LeaseKeeper

log = logging.getLogger(__name__)

T = TypeVar("T")

_EQUAL = rpc.Compare.CompareResult.Value("EQUAL")
_MOD = rpc.Compare.CompareTarget.Value("MOD")
_CREATE = rpc.Compare.CompareTarget.Value("CREATE")
_LEASE = rpc.Compare.CompareTarget.Value("LEASE")


class EtcdStore(Store):
    """A Store over a real etcd v3 cluster (3.4+).

    endpoints: client URLs (`http://host:port`, `https://host:port`, or `host:port`, which
    uses TLS only when a CA file is given). Key prefixes are the caller's business.
    Failover and give-up times, in seconds:
    - connect_timeout: a call (and start) raises StoreUnavailableError when no endpoint
      connects for this long;
    - request_timeout: the whole budget of one call, retries on other endpoints included;
    - attempt_timeout: the deadline of one attempt. Below etcd's own request timeout (5 s +
      2 election timeouts), so a write whose proposal was lost when the leader died is retried
      instead of waiting for etcd to give up on it.
    - probe_interval, stall_timeout: a watch quiet for probe_interval asks etcd for a progress
      report, and a watch or keepalive stream that leaves a request unanswered for
      stall_timeout (or a third of a lease's TTL) is reopened on another endpoint: a frozen
      or cut-off member can hold a TCP connection open without ever answering.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        probe_interval: float = 5.0,
        stall_timeout: float = 3.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        tls_default = ca_file is not None
        self._pool = EndpointPool(
            [Endpoint.parse(e.strip(), tls_default=tls_default) for e in endpoints],
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._attempt_timeout = attempt_timeout
        self._probe_interval = probe_interval
        self._stall_timeout = stall_timeout
        self._leases = LeaseKeeper(
            self._pool, connect_timeout=connect_timeout, stall_timeout=stall_timeout
        )
        self._cluster_id = ""
        self._started = False

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self._pool.endpoints[self._pool.current].url

    @property
    def lease_keeper(self) -> LeaseKeeper:
        return self._leases

    async def start(self) -> None:
        if self._started:
            return
        try:
            status = await self._call(
                "status", lambda s, t: s.maintenance.Status(rpc.StatusRequest(), timeout=t)
            )
        except StoreError:
            # Leave nothing open behind a failed start (`async with` will not call close).
            await self._pool.close_channels()
            raise
        self._cluster_id = format(status.header.cluster_id, "x")
        self._leases.start()
        self._started = True

    async def close(self) -> None:
        if self._pool.closed:
            return
        try:
            await self._leases.close()
        finally:
            await self._pool.close()

    # Reads and writes -------------------------------------------------------------------

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        request = rpc.RangeRequest(key=prefix or b"\0", range_end=prefix_end(prefix))
        response = await self._call("get_prefix", lambda s, t: s.kv.Range(request, timeout=t))
        return response.header.revision, [key_value(kv) for kv in response.kvs]

    async def get(self, key: bytes) -> KeyValue | None:
        response = await self._call(
            "get", lambda s, t: s.kv.Range(rpc.RangeRequest(key=key), timeout=t)
        )
        return key_value(response.kvs[0]) if response.kvs else None

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        request = rpc.PutRequest(key=key, value=value, lease=lease)
        response = await self._call("put", lambda s, t: s.kv.Put(request, timeout=t))
        return int(response.header.revision)

    async def put_if(
        self,
        key: bytes,
        value: bytes,
        *,
        lease: int = 0,
        expect_absent_or_lease: int | None = None,
        expect_mod_revision: int | None = None,
    ) -> bool:
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))
        base: list[Any] = []
        if expect_mod_revision is not None:
            base.append(
                rpc.Compare(key=key, target=_MOD, result=_EQUAL, mod_revision=expect_mod_revision)
            )
        if expect_absent_or_lease is None:
            request = rpc.TxnRequest(compare=base, success=[put])
        else:
            # etcd ANDs the compares of one transaction; "absent OR held by this lease" is an
            # outer transaction on absence whose failure branch tries the lease.
            absent = rpc.Compare(key=key, target=_CREATE, result=_EQUAL, create_revision=0)
            same_lease = rpc.Compare(
                key=key, target=_LEASE, result=_EQUAL, lease=expect_absent_or_lease
            )
            inner = rpc.TxnRequest(compare=[*base, same_lease], success=[put])
            request = rpc.TxnRequest(
                compare=[*base, absent],
                success=[put],
                failure=[rpc.RequestOp(request_txn=inner)],
            )
        # A transaction on mod_revision must not run twice: a retry after a lost answer
        # would report failure for our own write.
        response = await self._call(
            "put_if",
            lambda s, t: s.kv.Txn(request, timeout=t),
            idempotent=expect_mod_revision is None,
        )
        if response.succeeded:
            return True
        if expect_absent_or_lease is not None and response.responses:
            return bool(response.responses[0].response_txn.succeeded)
        return False

    async def put_all_if(self, writes: Sequence[Write]) -> WriteOutcome:
        if len(writes) > MAX_TXN_WRITES:
            raise StoreError(f"at most {MAX_TXN_WRITES} writes per transaction")
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=w.key, target=_MOD, result=_EQUAL, mod_revision=w.expect_mod_revision
                )
                for w in writes
            ],
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=w.key, value=w.value, lease=w.lease))
                for w in writes
            ],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=w.key)) for w in writes],
        )
        # Not idempotent: a retry after a lost answer would fail on our own write.
        response = await self._call(
            "put_all_if", lambda s, t: s.kv.Txn(request, timeout=t), idempotent=False
        )
        if response.succeeded:
            return WriteOutcome(True, int(response.header.revision), {})
        current: dict[bytes, KeyValue | None] = {}
        for write, answer in zip(writes, response.responses, strict=True):
            kvs = answer.response_range.kvs
            current[write.key] = key_value(kvs[0]) if kvs else None
        return WriteOutcome(False, int(response.header.revision), current)

    async def delete(self, key: bytes) -> int:
        request = rpc.DeleteRangeRequest(key=key)
        response = await self._call("delete", lambda s, t: s.kv.DeleteRange(request, timeout=t))
        return int(response.header.revision)

    async def delete_prefix(self, prefix: bytes) -> int:
        request = rpc.DeleteRangeRequest(key=prefix or b"\0", range_end=prefix_end(prefix))
        response = await self._call(
            "delete_prefix", lambda s, t: s.kv.DeleteRange(request, timeout=t)
        )
        return int(response.header.revision)

    # Leases -----------------------------------------------------------------------------

    async def grant_lease(self, ttl_seconds: int, *, keep: bool = True) -> int:
        request = rpc.LeaseGrantRequest(TTL=ttl_seconds)
        response = await self._call(
            "grant_lease", lambda s, t: s.lease.LeaseGrant(request, timeout=t)
        )
        if response.error:
            raise StoreError(f"grant_lease: {response.error}")
        if keep:
            self._leases.keep(response.ID, int(response.TTL), refresh_now=False)
        return int(response.ID)

    async def check_lease(self, lease_id: int) -> int:
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        response = await self._call(
            "check_lease", lambda s, t: s.lease.LeaseTimeToLive(request, timeout=t)
        )
        if response.TTL < 0:
            raise LeaseNotFoundError(f"lease {lease_id:x} not found")
        return max(1, int(response.TTL))

    def refresh_lease(self, lease_id: int) -> None:
        self._leases.refresh(lease_id)

    async def keep_lease(self, lease_id: int) -> int:
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        response = await self._call(
            "keep_lease", lambda s, t: s.lease.LeaseTimeToLive(request, timeout=t)
        )
        # etcd answers TTL -1 for a lease it does not know (expired or revoked).
        if response.TTL < 0:
            raise LeaseNotFoundError(f"lease {lease_id:x} not found")
        self._leases.keep(lease_id, int(response.grantedTTL), refresh_now=True)
        # TTL counts whole seconds down; 0 means "under a second left", still alive.
        return max(1, int(response.TTL))

    def lease_answer_age(self) -> float:
        return self._leases.answer_age()

    def set_lease_lost_listener(self, listener: Callable[[int], None] | None) -> None:
        self._leases.set_lost_listener(listener)

    def release_lease(self, lease_id: int) -> None:
        self._leases.release(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        self._leases.forget(lease_id)
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseNotFoundError):
            await self._call("revoke_lease", lambda s, t: s.lease.LeaseRevoke(request, timeout=t))

    # Watching (controlplane/store/etcd_watch.py) -------------------------------------------

    def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        return etcd_watch.watch_prefix(
            self._pool,
            prefix,
            start_revision,
            connect_timeout=self._connect_timeout,
            probe_interval=self._probe_interval,
            stall_timeout=self._stall_timeout,
            revision=self._revision,
        )

    async def _revision(self) -> int:
        """The cluster's revision now (a linearizable read of nothing)."""
        request = rpc.RangeRequest(key=b"\0", count_only=True)
        response = await self._call("revision", lambda s, t: s.kv.Range(request, timeout=t))
        return int(response.header.revision)

    async def last_event_revision(self, prefix: bytes, start_revision: int, revision: int) -> int:
        return await etcd_watch.last_event_revision(
            self._pool,
            prefix,
            start_revision,
            revision,
            connect_timeout=self._connect_timeout,
            request_timeout=self._request_timeout,
            put=self.put,
        )

    # Calls ------------------------------------------------------------------------------

    async def _call(
        self,
        what: str,
        invoke: Callable[[Stubs, float], Awaitable[T]],
        *,
        idempotent: bool = True,
    ) -> T:
        """Run one unary call, failing over between endpoints.

        Gives up with StoreUnavailableError when no endpoint connects for connect_timeout,
        or when no attempt succeeds within request_timeout.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self._request_timeout
        unconnected_since: float | None = None
        n = len(self._pool.endpoints)
        tried = 0
        last = "no endpoint connected"
        while True:
            now = loop.time()
            remaining = deadline - now
            if unconnected_since is not None:
                remaining = min(remaining, unconnected_since + self._connect_timeout - now)
            if remaining <= 0:
                raise StoreUnavailableError(f"{what}: no etcd endpoint answered ({last})")
            index = self._pool.current
            if tried and tried % n == 0:
                # Every endpoint failed once: pause before the next round.
                await asyncio.sleep(min(remaining, 0.05 * 2 ** min(tried // n, 4)))
            tried += 1
            # A member that swallows packets must not use up the budget of the others.
            per_endpoint = max(0.25, self._connect_timeout / n) if n > 1 else remaining
            stubs = await self._pool.ready(index, min(remaining, per_endpoint))
            if stubs is None:
                last = f"{self._pool.endpoints[index].url} did not connect"
                if unconnected_since is None:
                    unconnected_since = now
                self._pool.rotate(index)
                continue
            unconnected_since = None
            try:
                return await invoke(stubs, min(self._attempt_timeout, max(remaining, 0.05)))
            except grpc.aio.AioRpcError as exc:
                if self._pool.closed:
                    raise StoreClosedError("etcd store closed") from None
                if exc.code() not in RETRYABLE_CODES:
                    raise translate(exc, what) from None
                self._pool.rotate(index)
                if not idempotent:
                    raise translate(exc, what) from None
                last = f"{self._pool.endpoints[index].url}: {exc.code().name} {exc.details()}"
                log.info("etcd %s failed on %s; trying the next endpoint", what, last)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._pool.closed and current is not None and not current.cancelling():
                    raise StoreClosedError("etcd store closed") from None
                raise
