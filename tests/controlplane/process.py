"""A control plane as a real `corral controlplane` process (so a test can SIGKILL it), and
the gRPC health check it is waited on with. The harness (tests/controlplane/harness.py) hands
these out too, as h.ControlPlaneProcess, h.health_status, h.SERVING and h.NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.config import ControlPlaneConfig

CORRAL = str(Path(sys.executable).parent / "corral")


async def health_status(address: str, service: str = "") -> int | None:
    """The standard health service's answer, or None while nothing answers."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.aio.AioRpcError:
            return None
        return int(response.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ControlPlaneProcess:
    """`corral controlplane` as a real process, so a test can SIGKILL it."""

    def __init__(self, cfg: ControlPlaneConfig, log_path: Path) -> None:
        self.config = cfg
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.config.listen

    def args(self) -> list[str]:
        cfg = self.config
        args = [
            CORRAL,
            "controlplane",
            "--listen",
            cfg.listen,
            "--store",
            cfg.store,
            "--lease-ttl",
            str(cfg.lease_ttl_seconds),
        ]
        if cfg.store == "etcd":
            args += ["--etcd", ",".join(cfg.etcd_endpoints)]
        if cfg.replica_id:
            args += ["--replica-id", cfg.replica_id]
        if cfg.metrics_listen:
            args += ["--metrics-listen", cfg.metrics_listen]
        return args

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        env = {
            "PATH": "/usr/bin:/bin",
            "CORRAL_CONTROLPLANE_HEARTBEAT_INTERVAL_SECONDS": str(
                self.config.heartbeat_interval_seconds
            ),
            "CORRAL_CONTROLPLANE_SHUTDOWN_GRACE_SECONDS": str(self.config.shutdown_grace_seconds),
            "CORRAL_CONTROLPLANE_LOAD_WRITE_INTERVAL_SECONDS": str(
                self.config.load_write_interval_seconds
            ),
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    async def wait_serving(self, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while await health_status(self.address) != SERVING:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"control plane exited: {self.log_tail()}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the replica dies without any cleanup."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then wait: a graceful shutdown."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
