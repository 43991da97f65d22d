"""What the security tests share: unique secrets, a TLS (or mutual-TLS) control plane with a
token per door, gRPC channel credentials, AdminService.ListBackends, an in-process agent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

import agent
from corral.config import AgentConfig, Secret
from corral.v1 import admin_pb2, admin_pb2_grpc
from tests.controlplane import harness as h
from tests.support.etcd import TlsFiles, make_tls_files

MODEL = "m"


def secret(kind: str) -> str:
    """A unique secret value: any occurrence of it in output is a leak."""
    return f"{kind}-{uuid.uuid4().hex}"


@dataclasses.dataclass
class Door:
    address: str
    agent_token: str
    edge_token: str
    admin_token: str
    tls: TlsFiles


@contextlib.asynccontextmanager
async def tls_controlplane(tmp_path: Path, *, mutual: bool) -> AsyncIterator[Door]:
    tls = make_tls_files(tmp_path / "tls")
    door = Door("", secret("agent"), secret("edge"), secret("admin"), tls)
    cfg = h.config(
        agent_token=Secret(door.agent_token),
        edge_token=Secret(door.edge_token),
        admin_token=Secret(door.admin_token),
        tls_cert_file=str(tls.server_cert),
        tls_key_file=str(tls.server_key),
        tls_client_ca_file=str(tls.ca) if mutual else None,
    )
    async with h.running(cfg) as address:
        door.address = address
        yield door


def channel_credentials(
    tls: TlsFiles, *, client_cert: bool = True, ca: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or tls.ca).read_bytes(),
        private_key=tls.client_key.read_bytes() if client_cert else None,
        certificate_chain=tls.client_cert.read_bytes() if client_cert else None,
    )


async def list_backends(
    address: str, credentials: grpc.ChannelCredentials | None, token: str | None
) -> list[str]:
    """AdminService.ListBackends over a plain or TLS channel; raises AioRpcError."""
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        answer = await stub.ListBackends(
            admin_pb2.ListBackendsRequest(), metadata=metadata, timeout=10
        )
    return [b.spec.name for b in answer.backends]


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[None]:
    task = asyncio.create_task(agent.serve(config))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
