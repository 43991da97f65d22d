"""The namespace harness itself: hosts, links, partitions and cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import Host, Netns, Process, namespaces, sweep_stale

pytestmark = pytest.mark.netns

SERVE = "import http.server as h; h.HTTPServer(('0.0.0.0', 8080), h.SimpleHTTPRequestHandler).serve_forever()"  # noqa: E501 - one-line program


def reach(client: Host, ip: str, port: int = 8080, timeout: float = 0.5) -> bool:
    """Whether a TCP connection from client to ip:port succeeds within timeout."""
    program = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return client.run([sys.executable, "-c", program], timeout=timeout + 10).returncode == 0


def serve(host: Host, tmp_path: Path) -> Process:
    """A plain HTTP server on host:8080, waited for from inside the host."""
    proc = host.spawn([sys.executable, "-c", SERVE], tmp_path / f"{host.name}.log")
    for _ in range(200):
        if reach(host, "127.0.0.1", timeout=0.2):
            return proc
        assert proc.alive(), proc.log_tail()
    raise TimeoutError(f"server on {host.name} never listened: {proc.log_tail()}")


@pytest.fixture
def net() -> Iterator[Netns]:
    net = Netns.create()
    try:
        yield net
    finally:
        net.destroy()


def test_hosts_reach_each_other(net: Netns, tmp_path: Path) -> None:
    """Two hosts on the switch get distinct private addresses and talk over TCP."""
    a, b = net.add_host("a"), net.add_host("b")
    assert a.ip != b.ip and a.ip.startswith("10.213.0.")
    serve(a, tmp_path)
    assert reach(b, a.ip)


def test_link_down_cuts_and_link_up_restores(net: Netns, tmp_path: Path) -> None:
    """A host whose cable is pulled cannot be reached; plugged back in, it can."""
    a, b = net.add_host("a"), net.add_host("b")
    serve(a, tmp_path)
    assert reach(b, a.ip)
    net.link_down(a)
    assert not reach(b, a.ip)
    net.link_up(a)
    assert reach(b, a.ip, timeout=3)


def test_partition_is_silent_and_only_between_the_groups(net: Netns, tmp_path: Path) -> None:
    """A partition drops traffic between its two sides only; heal() brings it back."""
    a, b, c = net.add_host("a"), net.add_host("b"), net.add_host("c")
    serve(a, tmp_path)
    net.partition([a], [b])
    assert not reach(b, a.ip)
    assert reach(c, a.ip)
    # Silent, like a cut cable: the connect times out instead of being refused at once.
    probe = b.run(
        [sys.executable, "-c",
         f"import socket\ntry:\n socket.create_connection(({a.ip!r}, 8080), timeout=1)\n"
         "except TimeoutError:\n print('timeout')\nexcept OSError as e:\n print(type(e).__name__)"],
        timeout=10,
    )  # fmt: skip
    assert probe.stdout.strip() == "timeout", probe
    net.heal([a], [b])
    assert reach(b, a.ip, timeout=3)


def test_repair_undoes_every_fault(net: Netns, tmp_path: Path) -> None:
    """repair() plugs every cable back in and heals every partition."""
    a, b, c = net.add_host("a"), net.add_host("b"), net.add_host("c")
    serve(a, tmp_path)
    net.partition([a], [b])
    net.link_down(c)
    net.repair()
    assert reach(b, a.ip, timeout=3)
    assert reach(c, a.ip, timeout=3)


def test_spawned_processes_run_inside_the_host(net: Netns, tmp_path: Path) -> None:
    """spawn() runs inside the host's namespace, in its own process group; kill() ends it."""
    a = net.add_host("a")
    proc = a.spawn(
        [sys.executable, "-c", "import socket,time; print(socket.gethostbyname_ex('localhost'));"
         "import subprocess; print(subprocess.run(['/usr/sbin/ip','-o','addr'],"
         "capture_output=True,text=True).stdout, flush=True); time.sleep(60)"],
        tmp_path / "a.log",
    )  # fmt: skip
    assert os.getpgid(proc.pid) == proc.pid
    for _ in range(400):
        if a.ip in proc.log_path.read_text():
            break
        assert proc.alive(), proc.log_tail()
        time.sleep(0.02)  # polling another process's log file; no event to wait on
    assert a.ip in proc.log_path.read_text()
    a.kill(proc)
    assert not proc.alive()


def test_destroy_kills_processes_and_removes_namespaces(tmp_path: Path) -> None:
    """destroy() kills what the hosts spawned and deletes every namespace, idempotently."""
    net = Netns.create()
    a = net.add_host("a")
    proc = a.spawn([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "a.log")
    ours = {n for n in namespaces() if n.startswith(net.prefix + "-")}
    assert ours == {net.switch, a.namespace}
    net.destroy()
    net.destroy()
    assert not proc.alive()
    assert not [n for n in namespaces() if n.startswith(net.prefix + "-")]


def test_cleanup_when_the_test_body_fails(tmp_path: Path) -> None:
    """Leaving the context manager by an exception still removes every namespace."""
    prefix = ""
    with pytest.raises(RuntimeError), Netns.create() as net:
        prefix = net.prefix
        net.add_host("a").spawn([sys.executable, "-c", "import time; time.sleep(600)"],
                                tmp_path / "a.log")  # fmt: skip
        raise RuntimeError("the test failed")
    assert prefix
    assert not [n for n in namespaces() if n.startswith(prefix + "-")]


def test_sweep_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    """Namespaces (and their processes) of a run whose test process died are swept away."""
    # The stand-in run lives while its namespaces are built: the other test workers sweep
    # too (every Netns.create does), and would otherwise take them away half built.
    run = subprocess.Popen(["sleep", "600"])
    try:
        left = Netns.create(prefix=f"crl{run.pid}-0")
        orphan = left.add_host("a").spawn(
            [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "a.log"
        )
    finally:  # the run dies before the sweep, and never outlives a failure to build
        run.kill()
        run.wait()
    sweep_stale()
    assert not [n for n in namespaces() if n.startswith(left.prefix + "-")]
    orphan.popen.wait(10)
    left.destroy()
