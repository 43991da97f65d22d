"""Hosts on this machine: network namespaces on one virtual switch, for fault tests.

    net = Netns.create()                 # a switch namespace holding a Linux bridge
    cp1 = net.add_host("cp1")            # a namespace with eth0 (veth) on the bridge; cp1.ip
    proc = cp1.spawn([...], log_path)    # runs inside cp1 (`ip netns exec`), own process group
    cp1.kill(proc)                       # SIGKILL the whole group, as a crash would
    net.link_down(cp1); net.link_up(cp1) # pull / plug the host's cable (its switch port)
    net.partition([edge1], [cp1, cp2])   # silent drops between two groups, both ways
    net.heal([edge1], [cp1, cp2])
    net.destroy()                        # kills every process, deletes every namespace

Addresses come from 10.213.0.0/24, which exists only inside these namespaces: the root
namespace has no route to it, and each run has its own bridge, so runs never see each other.
Names carry a per-run prefix (pid based), so parallel or leftover runs never collide.

A partition works without packet filters (this kernel has neither iptables nor tc
classifiers): each side gets a permanent neighbour entry that maps the other side's address
to a MAC address nobody owns, so frames leave but are never received. Like a cut cable, it
is silent: no reset, no ICMP, only timeouts.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import log_tail

IP = "/usr/sbin/ip"
SUBNET = "10.213.0"
PREFIX_LEN = 24
# A locally administered unicast MAC that no interface has: frames to it go nowhere.
NOWHERE_MAC = "02:00:00:de:ad:01"
_RUNS = itertools.count()


class NetnsError(Exception):
    """A namespace or link operation failed."""


def _ip(*args: str) -> str:
    out = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if out.returncode < 0:  # e.g. a sweep killed what ran inside a namespace it deleted
        raise NetnsError(f"ip {' '.join(args)}: killed by signal {-out.returncode}")
    if out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Process:
    """A process running inside a host; the leader of its own process group."""

    name: str
    host: Host
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait, then SIGKILL what is left; the exit code."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


@dataclass
class Host:
    """One namespace with eth0 on the switch; `ip` is its address."""

    net: Netns
    name: str
    index: int
    namespace: str
    ip: str
    port: str  # the bridge-side interface, inside the switch namespace
    processes: list[Process] = field(default_factory=list)

    def spawn(
        self,
        argv: Sequence[str],
        log_path: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        name: str | None = None,
    ) -> Process:
        """Start argv inside this host, in a new session (its own process group)."""
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                [IP, "netns", "exec", self.namespace, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        proc = Process(name or Path(argv[0]).name, self, list(argv), log_path, popen)
        self.processes.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside this host to completion; its output (check is the caller's)."""
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        return subprocess.run(
            [IP, "netns", "exec", self.namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )

    def kill(self, proc: Process) -> None:
        """SIGKILL a process this host spawned (its whole group)."""
        proc.kill()

    def kill_all(self) -> None:
        for proc in self.processes:
            proc.kill()
        self.processes.clear()

    @property
    def mac(self) -> str:
        out = _ip("-n", self.namespace, "-o", "link", "show", "eth0")
        return out.split("link/ether", 1)[1].split()[0]


class Netns:
    """A set of hosts on one bridge; see the module docstring."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._destroyed = False
        self._down: set[str] = set()
        self._cut: set[tuple[str, str]] = set()

    @classmethod
    def create(cls, prefix: str | None = None) -> Netns:
        """A new switch namespace with a bridge; removed by destroy() (also at exit)."""
        sweep_stale()
        net = cls(prefix or f"crl{os.getpid()}-{next(_RUNS)}")
        atexit.register(net.destroy)
        try:
            net._add_namespace(net.switch)
            _ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
            # Forward at once: no STP listening delay on new ports.
            _ip("-n", net.switch, "link", "set", "br0", "type", "bridge", "forward_delay", "0")
            _ip("-n", net.switch, "link", "set", "br0", "up")
        except BaseException:
            net.destroy()
            raise
        return net

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A namespace with eth0 on the bridge and the next free address."""
        if name in self.hosts:
            raise NetnsError(f"host {name} exists")
        index = len(self.hosts) + 1
        if index > 250:
            raise NetnsError("too many hosts")
        namespace = f"{self.prefix}-{name}"
        port = f"p{index}"
        self._add_namespace(namespace)
        _ip(
            "link", "add", "eth0", "netns", namespace, "type", "veth",
            "peer", "name", port, "netns", self.switch,
        )  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        ip = f"{SUBNET}.{index + 1}"
        _ip("-n", namespace, "addr", "add", f"{ip}/{PREFIX_LEN}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(self, name, index, namespace, ip, port)
        self.hosts[name] = host
        return host

    # ------------------------------------------------------------------ faults

    def link_down(self, host: Host) -> None:
        """Pull the host's cable: its switch port goes down, nothing in or out."""
        _ip("-n", self.switch, "link", "set", host.port, "down")
        self._down.add(host.name)

    def link_up(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.port, "up")
        self._down.discard(host.name)

    def partition(self, side_a: Iterable[Host], side_b: Iterable[Host]) -> None:
        """Drop every packet between the two groups, silently and both ways."""
        a, b = list(side_a), list(side_b)
        for src, dst in [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]:
            _ip(
                "-n", src.namespace, "neigh", "replace", dst.ip,
                "lladdr", NOWHERE_MAC, "dev", "eth0", "nud", "permanent",
            )  # fmt: skip
            self._cut.add((src.name, dst.name))

    def heal(self, side_a: Iterable[Host], side_b: Iterable[Host]) -> None:
        """Undo partition(): addresses are resolved afresh."""
        a, b = list(side_a), list(side_b)
        for src, dst in [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]:
            with contextlib.suppress(NetnsError):
                _ip("-n", src.namespace, "neigh", "del", dst.ip, "dev", "eth0")
            self._cut.discard((src.name, dst.name))

    def repair(self) -> None:
        """Every cable plugged in and every partition healed."""
        for name in list(self._down):
            self.link_up(self.hosts[name])
        for src, dst in list(self._cut):
            self.heal([self.hosts[src]], [self.hosts[dst]])

    # ----------------------------------------------------------------- cleanup

    def destroy(self) -> None:
        """Kill every process any host spawned, then delete every namespace. Idempotent."""
        if self._destroyed:
            return
        self._destroyed = True
        for host in self.hosts.values():
            host.kill_all()
        for name in reversed(self._namespaces):
            _delete_namespace(name)
        self._namespaces.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.destroy)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _delete_namespace(name: str) -> None:
    # Whatever still runs inside (what a run spawned, and their children) is killed first:
    # a namespace with live processes outlives its name, and they would keep running.
    with contextlib.suppress(NetnsError):
        for pid in _ip("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(NetnsError):
        _ip("netns", "del", name)


def namespaces() -> list[str]:
    """Names of every namespace on this machine."""
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def sweep_stale() -> None:
    """Remove what runs of this module left when they were killed outright (no finalizer
    ran): their namespaces, named after a test process that no longer exists, and whatever
    still runs inside them."""
    for name in namespaces():
        head = name.split("-", 1)[0]
        if head.startswith("crl") and head[3:].isdigit() and not _pid_alive(int(head[3:])):
            _delete_namespace(name)
