"""A small AgentService that records what agents send, for protocol tests of the agent.

It follows the protocol (Registered, ReportAck, ends the stream OK after Goodbye) but keeps no
leases; the tests that count run against the real control plane over real etcd.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from corral.v1 import agent_pb2, agent_pb2_grpc
from tests.support.net import free_port

_ids = itertools.count(0x1000)


@dataclass
class Stream:
    metadata: dict[str, str]
    register: agent_pb2.Register
    session_id: str
    resumed: bool
    reports: list[agent_pb2.Report] = field(default_factory=list)
    goodbye: agent_pb2.Goodbye | None = None
    ended: bool = False
    # Monotonic times: when it registered, and when the agent last heard from it (the
    # session's lease runs a TTL from there on a real replica).
    opened_at: float = field(default_factory=time.monotonic)
    answered_at: float = 0.0


class RecordingControlPlane(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, name: str = "rec", heartbeat: int = 1, lease_ttl: int = 10) -> None:
        self.name = name
        self.heartbeat = heartbeat
        self.lease_ttl = lease_ttl
        # How reports are answered: "ack" (written), "received" (read, the store is slow:
        # ReportReceived only), "silent" (nothing, as a frozen replica) or "frozen" (neither
        # read nor answered once Registered: the agent's writes stall on flow control).
        self.answer = "ack"
        # Notified on every Register, Report and stream end: wait_until waits on it.
        self._news = asyncio.Condition()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.streams: list[Stream] = []
        # Refuse the next N registrations with this code.
        self.reject: tuple[grpc.StatusCode, str] | None = None
        self.reject_count = 0
        self.known_sessions: set[str] = set()
        # When set, Registered waits until this event is set.
        self.hold_registered: asyncio.Event | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> RecordingControlPlane:
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self, server)
        server.add_insecure_port(self.address)
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        """Die abruptly: open streams break without a status."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    @property
    def last(self) -> Stream:
        return self.streams[-1]

    def all_reports(self) -> list[agent_pb2.Report]:
        return [r for s in self.streams for r in s.reports]

    async def wait_until(self, check: Callable[[], object], within: float) -> None:
        """Until check() holds after what an agent sent; TimeoutError after `within` seconds."""
        async with asyncio.timeout(within), self._news:
            await self._news.wait_for(check)

    async def _notify(self) -> None:
        async with self._news:
            self._news.notify_all()

    async def Connect(  # the gRPC method name
        self,
        request_iterator: AsyncIterator[agent_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[agent_pb2.ConnectResponse]:
        messages = aiter(request_iterator)
        first = await anext(messages)
        assert first.WhichOneof("message") == "register"
        if self.reject is not None and self.reject_count > 0:
            self.reject_count -= 1
            await context.abort(*self.reject)
        reg = first.register
        resumed = reg.resume_session_id in self.known_sessions
        session_id = reg.resume_session_id if resumed else f"{next(_ids):x}"
        self.known_sessions.add(session_id)
        stream = Stream(
            metadata={str(k): str(v) for k, v in context.invocation_metadata() or ()},
            register=reg,
            session_id=session_id,
            resumed=resumed,
        )
        self.streams.append(stream)
        await self._notify()
        if self.hold_registered is not None:
            await self.hold_registered.wait()
        stream.answered_at = time.monotonic()
        yield agent_pb2.ConnectResponse(
            registered=agent_pb2.Registered(
                session_id=session_id,
                lease_ttl_seconds=self.lease_ttl,
                heartbeat_interval_seconds=self.heartbeat,
                controlplane_id=self.name,
                resumed=resumed,
            )
        )
        try:
            if self.answer == "frozen":
                await asyncio.Event().wait()  # until the stream is cancelled
            async for message in messages:
                kind = message.WhichOneof("message")
                if kind == "report":
                    stream.reports.append(message.report)
                    await self._notify()
                    seq = message.report.seq
                    if self.answer == "ack":
                        stream.answered_at = time.monotonic()
                        yield agent_pb2.ConnectResponse(ack=agent_pb2.ReportAck(seq=seq))
                    elif self.answer == "received":
                        stream.answered_at = time.monotonic()
                        received = agent_pb2.ReportReceived(seq=seq)
                        yield agent_pb2.ConnectResponse(received=received)
                elif kind == "goodbye":
                    stream.goodbye = message.goodbye
                    self.known_sessions.discard(session_id)
                    # Wait for the half-close, as the real control plane does.
                    async for _ in messages:
                        pass
                    return
        finally:
            stream.ended = True
            await self._notify()
