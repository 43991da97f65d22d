"""One way to open a gRPC channel to the control plane, for agents, edges and `corral status`:
the same keepalive and retry options, TLS when credentials are given (corral/tls.py)."""

from __future__ import annotations

from typing import Any, Final

import grpc

from corral.keepalive import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS

# The end-of-stream marker of grpc.aio's call.read(); missing from grpc-stubs.
EOF: Final[object] = getattr(grpc.aio, "EOF")  # noqa: B009

__all__ = ["EOF", "KEEPALIVE_MS", "KEEPALIVE_TIMEOUT_MS", "aio_channel", "options", "sync_channel"]


def options(
    *, keepalive_ms: int = KEEPALIVE_MS, keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS
) -> tuple[tuple[str, Any], ...]:
    return (
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # We move between control-plane replicas ourselves: no transparent retries.
        ("grpc.enable_retries", 0),
    )


def aio_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    *,
    keepalive_ms: int = KEEPALIVE_MS,
    keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS,
) -> grpc.aio.Channel:
    """An asyncio channel to one control-plane address (TLS when credentials are given)."""
    opts = options(keepalive_ms=keepalive_ms, keepalive_timeout_ms=keepalive_timeout_ms)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, credentials, options=opts)


def sync_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A blocking channel, for one-shot command-line calls (`corral status`)."""
    if credentials is None:
        return grpc.insecure_channel(address, options=options())
    return grpc.secure_channel(address, credentials, options=options())
