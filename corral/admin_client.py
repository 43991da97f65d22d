"""One AdminService call from the command line (`corral keys|teams|prices|audit`, `corral
providers|fallbacks`): the connection flags, one short-lived channel, gRPC failures as one
StatusError (corral/status.py says them in one line)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import grpc

from corral.channels import sync_channel
from corral.status import StatusError, Tls, _translate, connection
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


def run(
    args: argparse.Namespace,
    request_of: Callable[[argparse.Namespace], tuple[str, Any]],
    render: Callable[[argparse.Namespace, Any], str],
) -> int:
    """One command: its request made from the flags, sent, and the answer printed; 0, or 1/2
    with a one-line message (2: the command line itself is wrong)."""
    try:
        tls, token = connection(args)
        try:
            method, request = request_of(args)
        except ValueError as exc:  # protobuf refuses a number its field cannot hold
            raise StatusError(f"{exc} (a flag's number is out of its range)", 2) from None
        answer = call(args.controlplane, token, tls, method, request)
    except StatusError as exc:
        print(f"corral {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(render(args, answer))
    return 0
