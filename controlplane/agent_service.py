"""corral.v1.AgentService: the gRPC side of agent sessions (agents.py holds the logic).

One stream per agent. The first message must be a Register; then Reports (each answered
with a ReportAck) until a Goodbye. Commands (drain/undrain) go out whenever an operator
toggles the backend. All writes to the stream go through one writer task, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc
from google.protobuf.message import DecodeError

from controlplane.agents import AgentSession
from controlplane.errors import (
    ControlPlaneError,
    InvalidArgumentError,
    SilentAgentError,
)
from controlplane.replica import Replica
from corral.tasks import stopped
from corral.v1 import agent_pb2

log = logging.getLogger(__name__)

SERVICE = "corral.v1.AgentService"

Ending = Literal["goodbye", "eof"]


# How long the last acks may take to go out when a stream ends.
WRITER_DRAIN_SECONDS = 5.0


class AgentService:
    def __init__(self, replica: Replica, *, silence_timeout: float) -> None:
        self._replica = replica
        # An agent reports at least every heartbeat; this much silence means it is gone.
        # (Its lease does not wait for this: it runs out a TTL after the last message.)
        self._silence = silence_timeout

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Connect": grpc.stream_stream_rpc_method_handler(
                    self.connect,
                    request_deserializer=_decode,
                    response_serializer=agent_pb2.ConnectResponse.SerializeToString,
                )
            },
        )

    async def connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse],
    ) -> None:
        metrics = self._replica.metrics
        try:
            hub = self._replica.parts().hub
        except ControlPlaneError as exc:
            await self._refuse(context, exc)
            return
        messages = aiter(request_iterator)
        try:
            async with asyncio.timeout(self._silence):
                first = await anext(messages, None)
        except TimeoutError:
            await self._refuse(context, SilentAgentError("no Register message in time"))
            return
        if first is None:
            return
        if first is _UNDECODABLE:
            await self._refuse(context, InvalidArgumentError(_UNDECODABLE_MESSAGE))
            return
        if first.WhichOneof("message") != "register":
            await self._refuse(
                context, InvalidArgumentError("the first message on a stream must be a register")
            )
            return
        session = hub.session(context.peer())
        try:
            registered = await session.register(first.register)
        except ControlPlaneError as exc:
            log.info("refused a registration from %s: %s", context.peer(), exc)
            await self._refuse(context, exc)
            return
        # From here on the session holds a lease: whatever happens, the finally lets it go.
        writer: asyncio.Task[None] | None = None
        flusher: asyncio.Task[None] | None = None
        failure: ControlPlaneError | None = None
        ending: Ending | None = None
        try:
            await context.write(agent_pb2.ConnectResponse(registered=registered))
            writer = asyncio.create_task(self._write_loop(context, session))
            flusher = asyncio.create_task(session.run())
            ending = await self._read_loop(messages, session)
        except ControlPlaneError as exc:
            failure = exc
        finally:
            if ending != "goodbye":
                session.abandon()
            tasks = [t for t in (flusher, writer) if t is not None]
            if flusher is not None:
                flusher.cancel()
            # Let the writer send what is queued (the last acks), then end it.
            session.outbound.put_nowait(_END)
            try:
                if tasks:
                    await asyncio.wait(tasks, timeout=WRITER_DRAIN_SECONDS)
            finally:
                for task in tasks:
                    task.cancel()
                # Owned to the end: they have finished (their finally blocks ran) before the
                # stream's handler returns.
                await asyncio.gather(*tasks, return_exceptions=True)
        if failure is not None:
            log.info("agent stream for %s ended: %s", session.name, failure)
            metrics.rejections.labels(failure.reason).inc()
            await context.abort(failure.code, str(failure))

    async def _read_loop(
        self, messages: AsyncIterator[agent_pb2.ConnectRequest], session: AgentSession
    ) -> Ending:
        stopping = asyncio.create_task(session.stopped.wait())
        try:
            while True:
                incoming = asyncio.ensure_future(anext(messages, None))
                done, _ = await asyncio.wait(
                    {incoming, stopping},
                    timeout=self._silence,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if incoming not in done:
                    await stopped(incoming)
                    if stopping in done and session.stop_error is not None:
                        raise session.stop_error
                    raise SilentAgentError(
                        f"no message from the agent for {self._silence:g}s; "
                        "treating the stream as broken"
                    )
                message = incoming.result()
                if message is None:
                    await session.settle()  # what the agent said before it left still counts
                    return "eof"
                if message is _UNDECODABLE:
                    raise InvalidArgumentError(_UNDECODABLE_MESSAGE)
                kind = message.WhichOneof("message")
                if kind == "report":
                    # The agent is alive: its lease lasts a TTL from now (not from a timer
                    # of ours, so a cut-off agent leaves within the TTL of its last word).
                    session.touch()
                    await session.receive(message.report)
                elif kind == "goodbye":
                    await session.settle()
                    await session.goodbye(message.goodbye.reason)
                    return "goodbye"
                elif kind == "register":
                    raise InvalidArgumentError("register sent twice on one stream")
                else:
                    raise InvalidArgumentError("empty message (no register, report or goodbye)")
        finally:
            await stopped(stopping)

    @staticmethod
    async def _write_loop(
        context: grpc.aio.ServicerContext[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse],
        session: AgentSession,
    ) -> None:
        while True:
            message = await session.outbound.get()
            if message is _END:
                return
            try:
                await context.write(message)
            except Exception as exc:  # any write failure means the peer is gone
                log.debug("agent stream write failed: %r", exc)
                return

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse],
        error: ControlPlaneError,
    ) -> None:
        self._replica.metrics.rejections.labels(error.reason).inc()
        await context.abort(error.code, str(error))


# Queued after the last message to end the writer.
_END = agent_pb2.ConnectResponse()

# Stands in for bytes that are not a ConnectRequest, so the stream ends with INVALID_ARGUMENT
# and a clear message (grpc would otherwise answer UNKNOWN with the parser's exception).
_UNDECODABLE = agent_pb2.ConnectRequest()
_UNDECODABLE_MESSAGE = "a message on the stream is not a corral.v1.ConnectRequest (corrupt bytes)"


def _decode(data: bytes) -> agent_pb2.ConnectRequest:
    try:
        return agent_pb2.ConnectRequest.FromString(data)
    except DecodeError:
        return _UNDECODABLE
