"""Requests that are not the message they claim to be end with INVALID_ARGUMENT.

grpc answers a request its deserializer cannot parse with UNKNOWN and the parser's exception
text. This interceptor gives every unary-request method (routing, admin, health, reflection)
a lenient deserializer and refuses undecodable bytes itself; the agent stream does the same
per message (agent_service). decode_stored reads a record from the store the same lenient way.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the runtime class is not generic; only the stubs are
    _Interceptor = grpc.aio.ServerInterceptor

_UNDECODABLE = object()


class DecodeGuardInterceptor(_Interceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        if handler.response_streaming:
            behavior = handler.unary_stream
            factory: Any = grpc.unary_stream_rpc_method_handler
        else:
            behavior = handler.unary_unary
            factory = grpc.unary_unary_rpc_method_handler
        if behavior is None or inspect.isasyncgenfunction(behavior):
            return handler  # generator-style handlers are left as grpc serves them
        parse = handler.request_deserializer
        # grpc.aio handlers are coroutine functions; grpc's stubs type them as plain ones.
        serve: Callable[[Any, Any], Awaitable[Any]] = behavior  # type: ignore[assignment]  # see above
        method = handler_call_details.method or "this method"

        def lenient(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return _UNDECODABLE

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request is _UNDECODABLE:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request to {method} is not a valid protobuf message (corrupt bytes)",
                )
            return await serve(request, context)

        return factory(  # type: ignore[no-any-return]  # grpc's factories are untyped here
            guarded,
            request_deserializer=lenient,
            response_serializer=handler.response_serializer,
        )


def decode_stored(cls: type[M], raw: bytes) -> M | None:
    """A record read from the store; None (and a warning) when it is not a valid `cls`."""
    message = cls()
    try:
        message.ParseFromString(raw)
    except DecodeError:
        log.warning("undecodable %s record in the store; left out", cls.__name__)
        return None
    return message
