"""Agent sessions: registration, leases, status writes, commands. No gRPC in here.

A session is one agent stream on this replica. It holds (or shares, after a resume) a store
lease; every key it writes (spec, status, presence) is attached to that lease, so a dead
agent's backend vanishes by itself. Nothing keeps a session lease alive on a timer: every
message from the agent (Register, Report) refreshes it once, so it runs out one TTL after the
agent's last message, whatever the replica does. A silent agent (host cut off, stream broken)
therefore leaves routing within the TTL of its last word; a Goodbye revokes the lease (the
backend leaves at once); an agent that resumes the session, here or on another replica,
refreshes it with its Register and its backend never leaves.

Reports are applied in order by the session's own task, never by the stream's reader: a
status write held up by the store (an etcd election can hold a Put for seconds) must not
hold up reading the agent's next messages, whose arrival is what keeps the lease alive. A
report read while earlier ones still wait is answered at once with ReportReceived (while the
store confirms lease refreshes), so the agent, which takes a silent replica for dead, stays:
moving to another replica in the middle of an election only risks the lease.

Leases and timing: controlplane/leases.py; which statuses reach the store:
controlplane/status_throttle.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from controlplane.errors import (
    ControlPlaneError,
    NameTakenError,
    SessionLostError,
    translate_store_error,
)
from controlplane.keys import DrainFlag, KeyLayout
from controlplane.leases import LeaseBook, heartbeat_seconds, session_id_of
from controlplane.metrics import Metrics
from controlplane.status_throttle import Action, StatusThrottle
from controlplane.store.base import Store, StoreError
from controlplane.validation import check_register, check_status
from corral.v1 import admin_pb2, agent_pb2, types_pb2

log = logging.getLogger(__name__)

# Reports read but not yet applied, per session. When the store is slower than an agent's
# heartbeat they queue here; a full queue holds the reader (back-pressure on a flood).
REPORTS_QUEUED = 64


@dataclass(frozen=True)
class SessionSettings:
    replica_id: str
    lease_ttl: int
    heartbeat_interval: float
    load_write_interval: float


class AgentHub:
    """Every agent session on this replica, by backend name."""

    def __init__(
        self,
        store: Store,
        layout: KeyLayout,
        settings: SessionSettings,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.layout = layout
        self.settings = settings
        self.metrics = metrics
        self.leases = LeaseBook(store, settings.lease_ttl)
        self._sessions: dict[str, AgentSession] = {}

    def session(self, peer: str) -> AgentSession:
        return AgentSession(self, peer)

    def attach(self, session: AgentSession) -> None:
        previous = self._sessions.get(session.name)
        if previous is not None and previous is not session:
            previous.stop(SessionLostError("a newer stream took over this session"))
        self._sessions[session.name] = session
        self.metrics.agents_connected.set(len(self._sessions))

    def detach(self, session: AgentSession) -> None:
        if self._sessions.get(session.name) is session:
            del self._sessions[session.name]
        self.metrics.agents_connected.set(len(self._sessions))

    def on_drain(self, name: str, flag: DrainFlag | None) -> None:
        """The view saw a drain flag change: tell the agent whose backend it is."""
        session = self._sessions.get(name)
        if session is None:
            return
        command = agent_pb2.Command(
            type=agent_pb2.COMMAND_TYPE_DRAIN if flag else agent_pb2.COMMAND_TYPE_UNDRAIN,
            reason=flag.reason if flag else "",
        )
        session.send(agent_pb2.ConnectResponse(command=command))

    def on_removed(self, name: str) -> None:
        """The view saw a backend's record vanish: if a session here holds it, check it.

        A lease can expire just as an agent resumes it (the agent came back a moment too
        late); the session must then end, so the agent registers afresh at once instead of
        reporting into a session whose backend is gone.
        """
        session = self._sessions.get(name)
        if session is not None:
            session.verify()

    def on_lease_lost(self, lease: int) -> None:
        """A refresh found a lease gone (expired, or revoked elsewhere): its backend has
        left routing, so every session on it ends now and its agent registers afresh."""
        for session in list(self._sessions.values()):
            if session.lease == lease:
                session.stop(
                    SessionLostError(
                        f"session lease {session_id_of(lease)} of {session.name!r} expired; "
                        "register again"
                    )
                )

    def stop_all(self, error: ControlPlaneError) -> None:
        for session in list(self._sessions.values()):
            session.stop(error)


class AgentSession:
    def __init__(self, hub: AgentHub, peer: str) -> None:
        self._hub = hub
        self._peer = peer
        self.name = ""
        self.agent_id = ""
        self.lease = 0
        self.outbound: asyncio.Queue[agent_pb2.ConnectResponse] = asyncio.Queue()
        self._reports: asyncio.Queue[agent_pb2.Report] = asyncio.Queue(REPORTS_QUEUED)
        # Reports received and not yet applied (queued, or the one being written).
        self._unapplied = 0
        # Set when the replica ends the session (shutdown, superseded); `stop_error` says why.
        self.stopped = asyncio.Event()
        self.stop_error: ControlPlaneError | None = None
        self._throttle = StatusThrottle(hub.settings.load_write_interval)
        self._write_lock = asyncio.Lock()
        self._pending = asyncio.Event()
        self._verify = asyncio.Event()
        self._registered = False
        self._ended = False

    # Lifecycle --------------------------------------------------------------------------

    async def register(self, register: agent_pb2.Register) -> agent_pb2.Registered:
        """Validate, claim the backend name under a (new or resumed) lease, write it all."""
        check_register(register)
        hub = self._hub
        spec = register.backend
        self.name = spec.name
        self.agent_id = register.agent_id
        try:
            lease, resumed = await self._acquire(register)
        except StoreError as exc:
            raise translate_store_error(exc, "granting a session lease") from exc
        try:
            replaced = await self._claim(register, lease)
            # Attached before the drain flag is read, so no drain command can fall between.
            self.lease = lease
            hub.attach(self)
            await self._write_status(register.status, lease)
            info = admin_pb2.AgentInfo(
                agent_id=register.agent_id,
                backend_name=spec.name,
                session_id=session_id_of(lease),
                controlplane_id=hub.settings.replica_id,
                peer=self._peer,
                connected_unix_ms=int(time.time() * 1000),
                agent_version=register.agent_version,
            )
            await hub.store.put(hub.layout.agent(spec.name), info.SerializeToString(), lease=lease)
            hub.metrics.store_writes.labels("presence").inc()
            drained = await hub.store.get(hub.layout.drain(spec.name)) is not None
            if replaced:
                # The same agent registered again with a fresh session: the old session's
                # lease now holds none of this backend's keys; end it.
                await hub.leases.revoke(replaced)
        except StoreError as exc:
            hub.detach(self)
            hub.leases.release(lease)
            raise translate_store_error(exc, f"registering backend {spec.name!r}") from exc
        except BaseException:
            hub.detach(self)
            hub.leases.release(lease)
            raise
        self._registered = True
        log.info(
            "agent %s registered backend %s (session %s%s) from %s",
            register.agent_id,
            spec.name,
            session_id_of(lease),
            ", resumed" if resumed else "",
            self._peer,
        )
        return agent_pb2.Registered(
            session_id=session_id_of(lease),
            lease_ttl_seconds=hub.settings.lease_ttl,
            heartbeat_interval_seconds=heartbeat_seconds(hub.settings.heartbeat_interval),
            controlplane_id=hub.settings.replica_id,
            resumed=resumed,
            drained=drained,
        )

    async def _acquire(self, register: agent_pb2.Register) -> tuple[int, bool]:
        """The session's lease: the one to resume if it still holds this backend, else new."""
        leases = self._hub.leases
        lease, resumed = await leases.acquire(register.resume_session_id)
        if not resumed:
            return lease, False
        try:
            current = await self._hub.store.get(self._hub.layout.spec(register.backend.name))
        except BaseException:
            leases.release(lease)
            raise
        if current is not None and current.lease == lease:
            return lease, True
        # Alive, but not holding this backend (its record lapsed, or the id is another
        # session's): not ours to take over.
        leases.release(lease)
        log.info(
            "session %s does not hold backend %s; starting a new session",
            register.resume_session_id,
            register.backend.name,
        )
        return await leases.acquire("")

    async def _claim(self, register: agent_pb2.Register, lease: int) -> int:
        """Take the backend name for this lease; return a lease we took it over from, or 0."""
        hub = self._hub
        key = hub.layout.spec(register.backend.name)
        value = types_pb2.Backend(
            spec=register.backend, agent_id=register.agent_id
        ).SerializeToString()
        for _ in range(3):
            if await hub.store.put_if(key, value, lease=lease, expect_absent_or_lease=lease):
                hub.metrics.store_writes.labels("spec").inc()
                return 0
            current = await hub.store.get(key)
            if current is None:
                continue  # the holder's lease ended in between: try again
            holder = types_pb2.Backend()
            try:
                holder.ParseFromString(current.value)
            except DecodeError:
                holder.agent_id = "(unreadable)"
            if holder.agent_id != register.agent_id:
                raise NameTakenError(
                    f"backend name {register.backend.name!r} is already registered by agent "
                    f"{holder.agent_id!r}, whose session is alive; give this backend another "
                    "name, or stop that agent (its registration lapses within "
                    f"{hub.settings.lease_ttl}s of it stopping)"
                )
            # The same agent again (restarted without resuming): take over its record.
            if await hub.store.put_if(
                key, value, lease=lease, expect_mod_revision=current.mod_revision
            ):
                hub.metrics.store_writes.labels("spec").inc()
                return current.lease if current.lease != lease else 0
        raise NameTakenError(
            f"backend name {register.backend.name!r} is contended; try again in a moment"
        )

    def touch(self) -> None:
        """A message from the agent arrived: keep its session alive one more TTL."""
        if self.lease:
            self._hub.leases.touch(self.lease)

    async def receive(self, report: agent_pb2.Report) -> None:
        """A report read from the stream: checked now, applied (and acknowledged) in order
        by `run`, answered with ReportReceived at once if earlier ones still wait on the
        store; waits only when REPORTS_QUEUED reports are already waiting."""
        check_status(report.status, self.name)
        hub = self._hub
        hub.metrics.reports.inc()
        if self._unapplied and hub.store.lease_answer_age() < hub.settings.lease_ttl:
            self.send(agent_pb2.ConnectResponse(received=agent_pb2.ReportReceived(seq=report.seq)))
        self._unapplied += 1
        await self._reports.put(report)

    async def settle(self) -> None:
        """Wait until every report received so far is applied, or the session stopped."""
        applied = asyncio.ensure_future(self._reports.join())
        stopped = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait({applied, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            applied.cancel()
            stopped.cancel()

    async def _apply_reports(self) -> None:
        while True:
            report = await self._reports.get()
            async with self._write_lock:
                action = self._throttle.offer(report.status, _now())
                if action is Action.WRITE:
                    await self._write_status(report.status, self.lease)
                elif action is Action.DEFER:
                    self._pending.set()
            # Acknowledged once applied: an ack means the store has what the report said.
            self.send(agent_pb2.ConnectResponse(ack=agent_pb2.ReportAck(seq=report.seq)))
            self._unapplied -= 1
            self._reports.task_done()

    async def run(self) -> None:
        """The session's background work, until cancelled: applying reports in order,
        deferred load writes, and checking that the session still holds its backend when
        asked to."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._apply_reports())
                tasks.create_task(self._flush_forever())
                tasks.create_task(self._verify_forever())
        except* ControlPlaneError as group:
            self.stop(group.exceptions[0])  # type: ignore[arg-type]  # only ours are caught

    def verify(self) -> None:
        self._verify.set()

    async def _verify_forever(self) -> None:
        while True:
            await self._verify.wait()
            self._verify.clear()
            try:
                current = await self._hub.store.get(self._hub.layout.spec(self.name))
            except StoreError as exc:
                raise translate_store_error(exc, f"checking backend {self.name!r}") from exc
            if current is None or current.lease != self.lease:
                raise SessionLostError(
                    f"the registration of {self.name!r} lapsed (its session lease expired); "
                    "register again"
                )

    async def _flush_forever(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while (due := self._throttle.due_at()) is not None:
                delay = due - _now()
                if delay > 0:
                    await asyncio.sleep(delay)  # rate limit, not synchronisation
                    continue
                async with self._write_lock:
                    pending = self._throttle.pending
                    if pending is not None:
                        await self._write_status(pending, self.lease, kind="load")

    async def _write_status(
        self, status: types_pb2.BackendStatus, lease: int, kind: str = "status"
    ) -> None:
        hub = self._hub
        try:
            await hub.store.put(
                hub.layout.status(self.name), status.SerializeToString(), lease=lease
            )
        except StoreError as exc:
            raise translate_store_error(exc, f"writing the status of {self.name!r}") from exc
        hub.metrics.store_writes.labels(kind).inc()
        self._throttle.mark_written(status, _now())

    async def goodbye(self, reason: str) -> None:
        """The agent is leaving: its backend leaves routing now."""
        if self._ended:
            return
        self._ended = True
        self._hub.detach(self)
        log.info("agent %s said goodbye for %s: %s", self.agent_id, self.name, reason or "-")
        try:
            await self._hub.leases.revoke(self.lease)
        except StoreError as exc:
            # Nothing keeps the lease alive: the backend leaves within the TTL anyway.
            raise translate_store_error(exc, f"removing backend {self.name!r}") from exc
        self._hub.metrics.store_writes.labels("revoke").inc()

    def abandon(self) -> None:
        """The stream ended without a goodbye: the backend lapses unless the agent resumes."""
        if self._ended or not self._registered:
            return
        self._ended = True
        self._hub.detach(self)
        self._hub.leases.release(self.lease)
        log.info(
            "agent %s stream for %s ended without goodbye; session %s lapses in %ss",
            self.agent_id,
            self.name,
            session_id_of(self.lease),
            self._hub.settings.lease_ttl,
        )

    # Replica side -----------------------------------------------------------------------

    def send(self, message: agent_pb2.ConnectResponse) -> None:
        self.outbound.put_nowait(message)

    def stop(self, error: ControlPlaneError) -> None:
        if self.stop_error is None:
            self.stop_error = error
        self.stopped.set()


def _now() -> float:
    return time.monotonic()
