"""The fault suite's cluster: every component a real process on its own namespace host.

    hosts    etcd1 etcd2 etcd3 | cp1 cp2 | edge1 edge2 | be1 be2 be3 | client
    etcd     a three-member cluster, peers and clients on the hosts' addresses
    cp       `corral controlplane --store etcd --lease-ttl 3` (two replicas)
    be       a FakeServer (tests/faults/fake_host.py) and `corral agent` beside it
    edge     `corral edge --controlplane cp1,cp2 --state-dir ...`
    client   the observer (the test's eyes, tests/faults/observer.py) and the load generator

The test process stays in the root namespace and talks to the client host's observer and to
each fake through Unix sockets; it never needs a route into 10.213.0.0/24.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.faults.services import (
    CP_PORT,
    EDGE_PORT,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    FAKE_PORT,
    MODEL,
    PYTHON,
    Backend,
    EtcdNode,
    FaultSuiteError,
    Service,
    UnixHTTP,
    until,
)
from tests.support.etcd import etcd_binary
from tests.support.netns import Host, Netns

LEASE_TTL = 3.0
PROBE_INTERVAL = 0.5


class Cluster:
    """The whole topology; build with start(), always end with stop()."""

    def __init__(self, base: Path, *, lease_ttl: float = LEASE_TTL) -> None:
        self.base = base
        self.lease_ttl = lease_ttl
        self.logs = base / "logs"
        self.net = Netns.create()
        self.etcd: list[EtcdNode] = []
        self.cps: dict[str, Service] = {}
        self.edges: dict[str, Service] = {}
        self.backends: dict[str, Backend] = {}
        self.client: Host | None = None
        self.cp_addrs: dict[str, str] = {}
        self.edge_hosts: dict[str, Host] = {}
        self.observer_service: Service | None = None
        self.observer = UnixHTTP(base / "observer.sock")

    # --------------------------------------------------------------- building

    def start(self) -> Cluster:
        net = self.net
        etcd_hosts = [net.add_host(f"etcd{i}") for i in (1, 2, 3)]
        cp_hosts = {name: net.add_host(name) for name in ("cp1", "cp2")}
        edge_hosts = {name: net.add_host(name) for name in ("edge1", "edge2")}
        be_hosts = {name: net.add_host(name) for name in ("be1", "be2", "be3")}
        self.client = net.add_host("client")

        self.observer_service = self._service(
            self.client, "observer",
            [PYTHON, "-m", "tests.faults.observer", "--control", str(self.observer.path)],
        ).start()  # fmt: skip
        until(lambda: self.observer.call("GET", "/watch"), 30, "the observer answering")

        initial = ",".join(f"etcd{i + 1}=http://{h.ip}:{ETCD_PEER_PORT}" for i, h in
                           enumerate(etcd_hosts))  # fmt: skip
        for i, host in enumerate(etcd_hosts):
            name = f"etcd{i + 1}"
            node = EtcdNode(name, host, self._etcd_service(host, name, initial, "new"))
            self.etcd.append(node)
            node.service.start()
        for node in self.etcd:
            self.wait_etcd_healthy(node)

        cp_addrs = self.cp_addrs
        cp_addrs.update({name: f"{h.ip}:{CP_PORT}" for name, h in cp_hosts.items()})
        for name, host in cp_hosts.items():
            self.cps[name] = self._cp_service(host, name).start()
        for name in self.cps:
            self.wait_cp_serving(name)

        kinds = {"be1": "vllm", "be2": "sglang", "be3": "llamacpp"}
        # Agents start on different replicas, so killing one replica moves some of them.
        agent_cps = {"be1": ["cp1", "cp2"], "be2": ["cp2", "cp1"], "be3": ["cp1", "cp2"]}
        for name, host in be_hosts.items():
            control = UnixHTTP(self.base / f"{name}.sock")
            fake = self._service(
                host, f"{name}-fake",
                [PYTHON, "-m", "tests.faults.fake_host", "--kind", kinds[name], "--name", name,
                 "--model", MODEL, "--port", str(FAKE_PORT), "--control", str(control.path)],
            )  # fmt: skip
            agent = self._service(
                host, f"{name}-agent",
                [PYTHON, "-m", "corral.cli", "agent",
                 "--controlplane", ",".join(cp_addrs[c] for c in agent_cps[name]),
                 "--backend", f"http://{host.ip}:{FAKE_PORT}", "--type", kinds[name],
                 "--name", name, "--agent-id", f"agent-{name}",
                 "--probe-interval", str(PROBE_INTERVAL)],
                env={"CORRAL_AGENT_PROBE_TIMEOUT_SECONDS": "0.4"},
            )  # fmt: skip
            backend = Backend(name, kinds[name], host, fake, agent, control)
            self.backends[name] = backend
            backend.start_fake()
            agent.start()

        edge_cps = {"edge1": ["cp1", "cp2"], "edge2": ["cp2", "cp1"]}
        self.edge_hosts.update(edge_hosts)
        for name, host in edge_hosts.items():
            self.edges[name] = self._edge_service(host, name, edge_cps[name]).start()
        self.wait_settled(within=60)
        return self

    def _service(
        self, host: Host, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> Service:
        return Service(host, name, argv, self.logs / f"{name}.log", env or {})

    def _etcd_service(self, host: Host, name: str, initial: str, state: str) -> Service:
        client = f"http://{host.ip}:{ETCD_CLIENT_PORT}"
        peer = f"http://{host.ip}:{ETCD_PEER_PORT}"
        return self._service(
            host, name,
            [etcd_binary(), "--name", name, "--data-dir", str(self.base / name),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", initial, "--initial-cluster-state", state,
             "--initial-cluster-token", "corral-faults",
             "--heartbeat-interval", "50", "--election-timeout", "500",
             "--log-level", "warn"],
        )  # fmt: skip

    def _cp_service(self, host: Host, name: str) -> Service:
        return self._service(
            host, name,
            [PYTHON, "-m", "corral.cli", "controlplane", "--listen", f"{host.ip}:{CP_PORT}",
             "--store", "etcd", "--etcd", ",".join(n.client_url for n in self.etcd),
             "--lease-ttl", str(self.lease_ttl), "--replica-id", name],
            env={
                "CORRAL_CONTROLPLANE_HEARTBEAT_INTERVAL_SECONDS": "1",
                "CORRAL_CONTROLPLANE_LOAD_WRITE_INTERVAL_SECONDS": "1",
            },
        )  # fmt: skip

    def _edge_service(self, host: Host, name: str, cps: list[str]) -> Service:
        state_dir = self.base / f"{name}-state"
        state_dir.mkdir(parents=True, exist_ok=True)
        return self._service(
            host, name,
            [PYTHON, "-m", "corral.cli", "edge", "--listen", f"{host.ip}:{EDGE_PORT}",
             "--controlplane", ",".join(self.cp_addrs[c] for c in cps),
             "--state-dir", str(state_dir), "--edge-id", name, "--workers", "1"],
            env={
                # Short timeouts so a dead or hanging backend is left within seconds.
                "CORRAL_EDGE_CONNECT_TIMEOUT_SECONDS": "1",
                "CORRAL_EDGE_FIRST_BYTE_TIMEOUT_SECONDS": "1.5",
                "CORRAL_EDGE_IDLE_TIMEOUT_SECONDS": "2",
                "CORRAL_EDGE_EJECT_BASE_SECONDS": "1",
                "CORRAL_EDGE_EJECT_MAX_SECONDS": "5",
                # A lost control plane noticed within seconds, not the default 20 + 10 s.
                "CORRAL_EDGE_CONTROLPLANE_KEEPALIVE_SECONDS": "2",
                "CORRAL_EDGE_CONTROLPLANE_KEEPALIVE_TIMEOUT_SECONDS": "2",
            },
        )  # fmt: skip

    def restart_etcd(self, node: EtcdNode) -> None:
        """Start a killed member again from its data dir (it rejoins the cluster)."""
        initial = ",".join(f"{n.name}=http://{n.host.ip}:{ETCD_PEER_PORT}" for n in self.etcd)
        node.service = self._etcd_service(node.host, node.name, initial, "existing")
        node.service.start()

    # -------------------------------------------------------------- observing

    def http(self, method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
        """An HTTP call made from the client host."""
        return self.observer.call(
            "POST",
            "/http",
            {"method": method, "url": url, "json": body, "timeout": timeout},
            timeout=timeout + 5,
        )

    def admin(self, cp: str, method: str, request: dict[str, Any] | None = None) -> Any:
        """An AdminService call to one replica, from the client host; raises on error."""
        out = self.observer.call(
            "POST", "/admin", {"cp": self.cp_addrs[cp], "method": method, "request": request or {}}
        )
        if "error" in out:
            raise FaultSuiteError(f"{cp} {method}: {out['error']}")
        return out["response"]

    def snapshot(self, cp: str) -> dict[str, Any]:
        """The replica's current snapshot: version and, per backend, health, drain and how
        many requests it reports running or waiting."""
        snap = self.admin(cp, "GetSnapshot")["snapshot"]
        return {
            "version": int(snap.get("version", 0)),
            "backends": {
                b["spec"]["name"]: {
                    "health": b.get("status", {}).get("health", "HEALTH_STATE_UNSPECIFIED"),
                    "drained": bool(b.get("drained", False)),
                    "busy": int(b.get("status", {}).get("load", {}).get("running", 0))
                    + int(b.get("status", {}).get("load", {}).get("waiting", 0)),
                }
                for b in snap.get("backends", [])
            },
        }

    def edge_url(self, name: str) -> str:
        return f"http://{self.edge_hosts[name].ip}:{EDGE_PORT}"

    def readyz(self, edge: str) -> dict[str, Any]:
        out = self.http("GET", f"{self.edge_url(edge)}/readyz", timeout=2)
        if out.get("status") not in (200, 503):
            raise FaultSuiteError(f"{edge} /readyz: {out}")
        result: dict[str, Any] = json.loads(out["body"])
        return result

    def etcd_status(self, node: EtcdNode, *, via: Host | None = None) -> dict[str, Any] | None:
        """`etcdctl endpoint status` of one member, asked from the client host (or `via`);
        None if unreachable. `leader` is 0 while the member knows no leader."""
        assert self.client is not None
        etcdctl = str(Path(etcd_binary()).with_name("etcdctl"))
        out = (via or self.client).run(
            [etcdctl, f"--endpoints={node.client_url}", "--command-timeout=1s",
             "--dial-timeout=1s", "endpoint", "status", "-w", "json"],
            timeout=10, env={"ETCDCTL_API": "3"},
        )  # fmt: skip
        if out.returncode != 0:
            return None
        entries = json.loads(out.stdout)
        if not entries:
            return None
        status = entries[0]["Status"]
        return {
            "member": status["header"]["member_id"],
            "leader": status.get("leader", 0),
            "raft_index": status.get("raftIndex", 0),
            "revision": status["header"].get("revision", 0),
        }

    def etcd_leader(self, among: list[EtcdNode] | None = None) -> EtcdNode | None:
        for node in among or self.etcd:
            status = self.etcd_status(node)
            if status is not None and status["member"] == status["leader"]:
                return node
        return None

    def wait_etcd_healthy(self, node: EtcdNode, within: float = 30) -> None:
        def healthy() -> bool:
            if not node.service.alive():
                raise FaultSuiteError(f"{node.name} exited: {node.service.log_tail()}")
            out = self.http("GET", f"{node.client_url}/health", timeout=1)
            return out.get("status") == 200 and '"health":"true"' in out.get("body", "")

        until(healthy, within, f"{node.name} healthy")

    def wait_cp_serving(self, name: str, within: float = 30) -> None:
        def serving() -> bool:
            if not self.cps[name].alive():
                raise FaultSuiteError(f"{name} exited: {self.cps[name].log_tail()}")
            self.admin(name, "ListBackends")
            return True

        until(serving, within, f"control plane {name} serving")

    def live_cp(self) -> str:
        for name, service in self.cps.items():
            if service.alive():
                return name
        raise FaultSuiteError("no control-plane replica is running")

    def all_healthy(self, cp: str | None = None) -> int:
        """The snapshot version if every backend is healthy and undrained there, else 0."""
        snap = self.snapshot(cp or self.live_cp())
        backends = snap["backends"]
        ok = set(backends) == set(self.backends) and all(
            b["health"] == "HEALTH_STATE_HEALTHY" and not b["drained"] for b in backends.values()
        )
        return snap["version"] if ok else 0

    def wait_settled(self, within: float = 30) -> int:
        """Every backend healthy and undrained on every live replica, and both edges have
        applied that state; the lowest version the replicas give it."""

        def replicas_healthy() -> int:
            versions = [self.all_healthy(cp) for cp, s in self.cps.items() if s.alive()]
            return min(versions) if versions else 0

        # The lowest: a replica restarted with nothing changed since may give the same state a
        # higher version (the store's revision at its start) than the one edges applied.
        version = until(replicas_healthy, within, "every backend healthy and undrained")

        def edges_caught_up() -> bool:
            applied = {e: int(self.readyz(e).get("snapshot_version") or 0) for e in self.edges}
            replicas = {cp: self.snapshot(cp)["version"] for cp, s in self.cps.items() if s.alive()}
            assert all(v >= version for v in applied.values()), (
                f"edges applied {applied}; replicas' snapshot versions {replicas}"
            )
            return True

        until(edges_caught_up, within, f"both edges at snapshot version >= {version}")
        return version

    def explain(self) -> str:
        """Log tails of every process, for failure messages."""
        parts = []
        services: list[Service] = [n.service for n in self.etcd]
        services += [*self.cps.values(), *self.edges.values()]
        for backend in self.backends.values():
            services += [backend.fake, backend.agent]
        for service in services:
            parts.append(f"--- {service.name} ({service.log})\n{service.log_tail(15)}")
        return "\n".join(parts)

    # --------------------------------------------------------------- teardown

    def stop(self) -> None:
        self.net.destroy()
