"""The control plane as operators run it: `corral controlplane` processes, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.v1 import admin_pb2, admin_pb2_grpc
from tests.controlplane import harness as h
from tests.support.etcd import TlsFiles, make_tls_files


async def test_memory_store_process_serves_agents_and_edges(tmp_path: Path) -> None:
    """`corral controlplane --store memory` registers agents, streams snapshots, exits on TERM."""
    replica = h.ControlPlaneProcess(
        h.config(store="memory", replica_id="solo"), tmp_path / "cp.log"
    )
    replica.start()
    try:
        await replica.wait_serving()
        watcher = h.SnapshotWatcher(replica.address)
        agent = h.AgentClient(replica.address)
        registered = await agent.connect(h.register("local"))
        assert registered.controlplane_id == "solo"
        await watcher.until(h.has("local"))
        await agent.goodbye()
        await watcher.until(h.lacks("local"))
        await watcher.close()
    finally:
        code = await asyncio.to_thread(replica.stop)
    assert code == 0, replica.log_tail()
    assert "Traceback" not in replica.log_tail(200)


async def test_sigterm_tells_connected_agents_to_move(tmp_path: Path) -> None:
    """A graceful stop ends agent streams with UNAVAILABLE (reconnect elsewhere), not a hang."""
    replica = h.ControlPlaneProcess(h.config(store="memory"), tmp_path / "cp.log")
    replica.start()
    try:
        await replica.wait_serving()
        agent = h.AgentClient(replica.address)
        await agent.connect(h.register("b"))
        assert replica.process is not None
        replica.process.terminate()
        assert await asyncio.wait_for(agent.ended, 15) == grpc.StatusCode.UNAVAILABLE
        await agent.close()
    finally:
        await asyncio.to_thread(replica.stop)


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


def _credentials(tls: TlsFiles, *, client_cert: bool) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.client_key.read_bytes() if client_cert else None,
        certificate_chain=tls.client_cert.read_bytes() if client_cert else None,
    )


async def _admin_call(address: str, credentials: grpc.ChannelCredentials | None) -> None:
    channel = (
        grpc.aio.secure_channel(address, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        await admin_pb2_grpc.AdminServiceStub(channel).ListBackends(
            admin_pb2.ListBackendsRequest(), timeout=5
        )


async def test_tls_serves_only_tls(tls: TlsFiles) -> None:
    """With a certificate configured, TLS clients trusting the CA get in; plaintext does not."""
    cfg = h.config(tls_cert_file=str(tls.server_cert), tls_key_file=str(tls.server_key))
    async with h.running(cfg) as address:
        await _admin_call(address, _credentials(tls, client_cert=False))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _admin_call(address, None)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(tls: TlsFiles) -> None:
    """With a client CA configured, a client without a certificate is refused."""
    cfg = h.config(
        tls_cert_file=str(tls.server_cert),
        tls_key_file=str(tls.server_key),
        tls_client_ca_file=str(tls.ca),
    )
    async with h.running(cfg) as address:
        await _admin_call(address, _credentials(tls, client_cert=True))
        with pytest.raises(grpc.aio.AioRpcError):
            await _admin_call(address, _credentials(tls, client_cert=False))
        async with grpc.aio.secure_channel(address, _credentials(tls, client_cert=True)) as ch:
            response = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_unreadable_tls_file_is_a_clear_error(tmp_path: Path) -> None:
    """A TLS path that cannot be read stops serve() with a ControlPlaneError naming it."""
    from controlplane import ControlPlaneError

    missing = tmp_path / "absent.pem"
    cfg = h.config(tls_cert_file=str(missing), tls_key_file=str(missing))
    with pytest.raises(ControlPlaneError, match="cannot read TLS file"):
        async with h.running(cfg):
            pass


async def test_a_taken_port_is_a_clear_error() -> None:
    """A second replica on a port in use fails with ControlPlaneError, not a silent share."""
    from controlplane import ControlPlaneError

    cfg = h.config()
    async with h.running(cfg):
        with pytest.raises(ControlPlaneError, match="cannot listen on"):
            async with h.running(cfg):
                pass
