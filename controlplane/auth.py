"""Bearer-token checks per service, in one server interceptor.

Each protected service has its own token (agents, edges, admin). Reflection and health
stay open so operators and load balancers can look without a secret. Tokens are compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from corral.config import Secret

log = logging.getLogger(__name__)

RejectHook = Callable[[str], None]


def bearer_matches(presented: str | None, token: Secret) -> bool:
    """Whether an `authorization` header value carries the token (constant time)."""
    if not presented:
        return False
    scheme, _, credential = presented.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.strip().encode(), token.reveal().encode())


def _denied(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that refuses the call."""

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the runtime class is not generic; only the stubs are
    _Interceptor = grpc.aio.ServerInterceptor


class TokenAuthInterceptor(_Interceptor):
    def __init__(
        self, tokens: Mapping[str, Secret | None], on_reject: RejectHook | None = None
    ) -> None:
        # Service full name -> its token; services without a token are open.
        self._tokens = {service: token for service, token in tokens.items() if token is not None}
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method or ""
        service = method.lstrip("/").partition("/")[0]
        token = self._tokens.get(service)
        handler = await continuation(handler_call_details)
        if token is None or handler is None:
            return handler
        presented = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else value.decode(errors="replace")
                break
        if bearer_matches(presented, token):
            return handler
        if self._on_reject is not None:
            self._on_reject("unauthenticated")
        what = "missing" if presented is None else "wrong"
        log.info("refused %s: %s bearer token", method, what)
        return _denied(
            handler,
            f"{what} bearer token for {service}: send metadata 'authorization: Bearer <token>'",
        )
