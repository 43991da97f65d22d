"""The control plane's errors: one root, each kind carrying the gRPC status it maps to.

Store errors (controlplane.store.StoreError) are translated into these at the service
boundary by `status_of`; nothing below a servicer speaks gRPC status codes.
"""

from __future__ import annotations

import grpc

from controlplane.store.base import (
    LeaseNotFoundError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
)


class ControlPlaneError(Exception):
    """Root of every error the control plane raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # Label for the rejections metric.
    reason: str = "internal"


class InvalidArgumentError(ControlPlaneError):
    """The caller sent something malformed; the message says what and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class NameTakenError(ControlPlaneError):
    """Another live agent holds the backend name."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "already_exists"


class ContendedError(ControlPlaneError):
    """Other writers kept changing a record while this call tried to change it: the call was
    valid, and trying it again will most likely succeed."""

    code = grpc.StatusCode.ABORTED
    reason = "contended"


class NotFoundError(ControlPlaneError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "not_found"


class NotSyncedError(ControlPlaneError):
    """The replica has not (yet, or no longer) synced with its store."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "not_synced"


class ShuttingDownError(ControlPlaneError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "shutting_down"


class SessionLostError(ControlPlaneError):
    """The agent's session lease expired or was taken over; the agent must register again."""

    code = grpc.StatusCode.ABORTED
    reason = "session_lost"


class SilentAgentError(ControlPlaneError):
    """The agent sent nothing for too long; its stream is treated as broken."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "silent_agent"


class StoreFailedError(ControlPlaneError):
    """The store failed in a way the caller cannot fix (a bug or a foreign writer)."""

    code = grpc.StatusCode.INTERNAL
    reason = "store_error"


def translate_store_error(exc: StoreError, what: str) -> ControlPlaneError:
    """One store error as the control-plane error a caller sees."""
    if isinstance(exc, StoreUnavailableError):
        err: ControlPlaneError = NotSyncedError(f"{what}: the state store is unavailable ({exc})")
        err.reason = "store_unavailable"
        return err
    if isinstance(exc, StoreClosedError):
        return ShuttingDownError(f"{what}: the control plane is shutting down")
    if isinstance(exc, LeaseNotFoundError):
        return SessionLostError(f"{what}: the session lease expired; register again")
    return StoreFailedError(f"{what}: {exc}")
