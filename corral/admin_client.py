"""One AdminService call from the command line (`corral keys|teams|prices|audit`, `corral
providers|fallbacks`): the connection flags, one short-lived channel, gRPC failures as one
StatusError (corral/status.py says them in one line)."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from corral.channels import sync_channel
from corral.status import Tls, _translate
from corral.v1 import admin_pb2_grpc

CALL_TIMEOUT_SECONDS = 10.0


def connection_flags(p: argparse.ArgumentParser) -> None:
    """--controlplane, --admin-token-file and the TLS files."""
    p.add_argument("--controlplane", default="127.0.0.1:7701", help="HOST:PORT")
    p.add_argument("--admin-token-file")
    p.add_argument("--ca-file", help="speak TLS, trusting this CA bundle")
    p.add_argument("--cert-file", help="client certificate for mutual TLS")
    p.add_argument("--key-file", help="client key for mutual TLS")


def call(target: str, token: str | None, tls: Tls | None, method: str, request: Any) -> Any:
    """AdminService.<method>(request) at target; StatusError when gRPC fails."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    channel = sync_channel(target, tls.credentials() if tls is not None else None)
    try:
        with channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return getattr(stub, method)(request, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
    except grpc.RpcError as exc:
        raise _translate(exc, target) from None
