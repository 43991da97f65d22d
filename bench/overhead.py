"""Edge overhead: Corral's edge beside direct calls, nginx and a bare Python relay, in one run.

``./dev bench overhead [--seconds 8] [--no-write]``

nginx answers a fixed ~400-byte chat.completion on CPU 1; wrk (one thread, POST script) also
runs on CPU 1; each proxy under test runs alone on CPU 0. For every target: req/s and
p50/p99 at 32 and 64 connections, p50 at one connection (added latency = minus direct's),
RSS at rest and the peak under load, and the proxy's CPU use during the 32-connection run.
Scaling: the edge with --workers 2 and two relay processes, both spread over CPUs 0-1 (this
machine has only two cores, shared with nginx and wrk, so this shows the trend only).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench import nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    Proc,
    Procs,
    cpu_times,
    edge_available,
    ensure_tools,
    free_port,
    load_note,
    machine,
    md_table,
    now_utc,
    pin_self,
    wait_http,
    workspace,
    write_section,
)

CHAT_REQUEST = (
    b'{"model":"bench-model","messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello in five words."}],"max_tokens":32}'
)


def c1_seconds(seconds: float) -> int:
    """The one-connection run: shorter than the others, at least 3 s (wrk takes whole s)."""
    return max(3, round(seconds * 0.6))


class Sampled(Protocol):
    """A process (or group of processes) whose memory and CPU time can be read."""

    def rss_mib(self) -> float: ...
    def cpu_seconds(self) -> float: ...


@dataclass
class Measured:
    name: str
    note: str = ""
    c1: wrk.WrkResult | None = None
    c32: wrk.WrkResult | None = None
    c64: wrk.WrkResult | None = None
    rss_rest: float | None = None
    rss_peak: float | None = None
    cpu_c32: float | None = None  # proxy CPU seconds per wall second during the 32-conn run
    cpu0_busy: float | None = None  # CPU 0 busy fraction (all processes) during that run
    error: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class RssSampler:
    """Peak RSS of a process group while load runs (sampled every 200 ms)."""

    def __init__(self, proc: Sampled | None) -> None:
        self.proc = proc
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.proc is not None:
                self.peak = max(self.peak, self.proc.rss_mib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    name: str,
    url: str,
    proc: Sampled | None,
    script: Path,
    seconds: float,
    note: str = "",
) -> Measured:
    print(f"  {name}: ", end="", flush=True)
    m = Measured(name, note)
    try:
        # Warm-up: connections, pools, caches.
        wrk.run(url, script, connections=32, seconds=2, cpus=LOAD_CPU)
        m.rss_rest = proc.rss_mib() if proc is not None else None
        m.c1 = wrk.run(url, script, connections=1, seconds=c1_seconds(seconds), cpus=LOAD_CPU)
        print(f"c1 p50 {m.c1.p50 * 1e3:.3f} ms; ", end="", flush=True)
        with RssSampler(proc) as sampler:
            cpu0 = proc.cpu_seconds() if proc is not None else 0.0
            t0 = time.monotonic()
            stat0 = cpu_times()[int(PROXY_CPU)]
            m.c32 = wrk.run(url, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
            stat1 = cpu_times()[int(PROXY_CPU)]
            m.cpu0_busy = 1 - (stat1[1] - stat0[1]) / max(1, stat1[0] - stat0[0])
            if proc is not None:
                m.cpu_c32 = (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            m.c64 = wrk.run(url, script, connections=64, seconds=seconds, cpus=LOAD_CPU)
        m.rss_peak = sampler.peak if proc is not None else None
        print(f"c32 {m.c32.rps:,.0f} req/s; c64 {m.c64.rps:,.0f} req/s", flush=True)
    except BenchError as exc:
        m.error = str(exc).splitlines()[0][:200]
        print(f"FAILED: {m.error}", flush=True)
    return m


def start_edge(procs: Procs, name: str, cp_port: int, workers: int, cpus: str) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        PYTHON, "-m", "corral.cli", "edge",
        "--listen", f"127.0.0.1:{port}",
        "--controlplane", f"127.0.0.1:{cp_port}",
        "--workers", str(workers),
        "--log-level", "WARNING",
    ]  # fmt: skip
    proc = procs.start(name, argv, cpus=cpus)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, timeout=60)
    return proc, base


def run(
    seconds: float, rounds: int
) -> tuple[list[Measured], dict[str, str], list[tuple[float, float, float, float]]]:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info = {"machine": machine(), "load": load_note(), "date": now_utc()}
    print(f"{info['machine']}\n{info['load']}", flush=True)
    results: list[Measured] = []
    paired: list[tuple[float, float, float, float]] = []
    with workspace("overhead") as (tmp, procs):
        script = wrk.post_script(tmp / "post.lua", CHAT_REQUEST)
        backend_port = free_port()
        nginx.start(
            procs,
            "backend",
            lambda d: nginx.backend_conf(d, backend_port),
            LOAD_CPU,
            f"http://127.0.0.1:{backend_port}/health",
        )
        backend = f"http://127.0.0.1:{backend_port}"
        chat = "/v1/chat/completions"
        results.append(measure("direct to nginx backend", backend + chat, None, script, seconds))

        def one(name: str, starter: Callable[[], tuple[Proc | list[Proc], str]], note: str) -> None:
            try:
                procs_or_one, base = starter()
            except BenchError as exc:
                results.append(Measured(name, note, error=str(exc).splitlines()[0][:200]))
                print(f"  {name}: could not start: {exc}", flush=True)
                return
            group = procs_or_one if isinstance(procs_or_one, list) else [procs_or_one]
            proc: Sampled = group[0] if len(group) == 1 else _Group(group)
            try:
                results.append(measure(name, base + chat, proc, script, seconds, note))
            finally:
                for p in group:
                    procs.stop(p)

        def nginx_proxy() -> tuple[Proc, str]:
            port = free_port()
            proc = nginx.start(
                procs,
                "nginx-proxy",
                lambda d: nginx.proxy_conf(d, port, [f"127.0.0.1:{backend_port}"]),
                PROXY_CPU,
                None,
            )
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            return proc, f"http://127.0.0.1:{port}"

        def relay(count: int, cpus: list[str]) -> Callable[[], tuple[list[Proc], str]]:
            def start() -> tuple[list[Proc], str]:
                port = free_port()
                group = []
                for i in range(count):
                    argv = [PYTHON, "-m", "bench.relay", "--listen", f"127.0.0.1:{port}",
                            "--upstream", backend]  # fmt: skip
                    group.append(procs.start(f"relay{count}-{i}", argv, cpus=cpus[i]))
                for p in group:
                    wait_http(f"http://127.0.0.1:{port}/health", p)
                return group, f"http://127.0.0.1:{port}"

            return start

        one("nginx reverse proxy (1 worker)", nginx_proxy, "keepalive upstream")
        one("bare aiohttp+uvloop relay", relay(1, [PROXY_CPU]), "bench/relay.py")
        if edge_available():
            snap_port = free_port()
            snap = procs.start(
                "snapshots",
                [PYTHON, "-m", "bench.snapshot_server", "--listen", f"127.0.0.1:{snap_port}",
                 "--model", nginx.MODEL, "--backend", f"nginx={backend}"],
                cpus=LOAD_CPU,
            )  # fmt: skip
            time.sleep(0.5)
            snap.check_alive()
            one(
                "Corral edge (1 worker)",
                lambda: start_edge(procs, "edge1", snap_port, 1, PROXY_CPU),
                "corral edge --workers 1",
            )
            paired.extend(paired_rounds(procs, backend, snap_port, script, rounds))
            one(
                "Corral edge (--workers 2, CPUs 0-1)",
                lambda: start_edge(procs, "edge2", snap_port, 2, f"{PROXY_CPU},{LOAD_CPU}"),
                "shares CPU 1 with nginx and wrk",
            )
        else:
            results.append(Measured("Corral edge", error="edge.serve not in this tree yet"))
        one(
            "2 relay processes (CPUs 0-1)",
            relay(2, [PROXY_CPU, LOAD_CPU]),
            "shares CPU 1 with nginx and wrk",
        )
        results.append(
            measure("direct to nginx backend (again)", backend + chat, None, script, seconds)
        )
    return results, info, paired


def paired_rounds(
    procs: Procs, backend: str, snap_port: int, script: Path, rounds: int
) -> list[tuple[float, float, float, float]]:
    """Relay and edge both up on CPU 0, loaded in turn at 32 connections, `rounds` times:
    the ratio of neighbours in time is robust to load that comes and goes on the machine."""
    if rounds <= 0:
        return []
    print("  paired relay/edge rounds at 32 connections: ", end="", flush=True)
    port = free_port()
    relay = procs.start(
        "relay-paired",
        [PYTHON, "-m", "bench.relay", "--listen", f"127.0.0.1:{port}", "--upstream", backend],
        cpus=PROXY_CPU,
    )
    wait_http(f"http://127.0.0.1:{port}/health", relay)
    edge, base = start_edge(procs, "edge-paired", snap_port, 1, PROXY_CPU)
    chat = "/v1/chat/completions"
    relay_url, edge_url = f"http://127.0.0.1:{port}{chat}", base + chat
    out = []
    try:
        for url in (relay_url, edge_url):
            wrk.run(url, script, connections=32, seconds=2, cpus=LOAD_CPU)
        for _ in range(rounds):
            c0 = relay.cpu_seconds()
            r = wrk.run(relay_url, script, connections=32, seconds=5, cpus=LOAD_CPU)
            relay_cpu = relay.cpu_seconds() - c0
            c0 = edge.cpu_seconds()
            e = wrk.run(edge_url, script, connections=32, seconds=5, cpus=LOAD_CPU)
            edge_cpu = edge.cpu_seconds() - c0
            out.append((r.rps, e.rps, relay_cpu / r.requests, edge_cpu / e.requests))
            print(f"{e.rps / r.rps:.2f} ", end="", flush=True)
    except BenchError as exc:
        print(f"failed: {exc}", flush=True)
    finally:
        procs.stop(edge)
        procs.stop(relay)
    print(flush=True)
    return out


class _Group:
    """Several processes measured as one (RSS and CPU summed)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs

    def rss_mib(self) -> float:
        return sum(p.rss_mib() for p in self.procs)

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs)


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.2f}"


def report(
    results: list[Measured],
    info: dict[str, str],
    seconds: float,
    paired: list[tuple[float, float, float, float]],
) -> str:
    direct = results[0]
    relay = next((r for r in results if r.name.startswith("bare") and r.c32), None)
    rows = []
    for r in results:
        if r.error or r.c32 is None or r.c64 is None or r.c1 is None:
            rows.append([r.name, f"failed: {r.error}", "", "", "", "", "", "", "", "", ""])
            continue
        added = (
            "—" if r.name.startswith("direct") or direct.c1 is None
            else f"{(r.c1.p50 - direct.c1.p50) * 1e3:+.3f}"
        )  # fmt: skip
        vs_relay = f"{r.c32.rps / relay.c32.rps:.2f}x" if relay and relay.c32 else "n/a"
        vs_direct = f"{r.c32.rps / direct.c32.rps:.2f}x" if direct.c32 else "n/a"
        rss = "—" if r.rss_rest is None else f"{r.rss_rest:.0f} / {r.rss_peak or 0:.0f}"
        cpu = "—" if r.cpu_c32 is None else f"{r.cpu_c32 * 100:.0f}%"
        if r.cpu0_busy is not None:
            cpu += f" ({r.cpu0_busy * 100:.0f}%)"
        per_req = "—" if r.cpu_c32 is None else f"{r.cpu_c32 / r.c32.rps * 1e6:.0f}"
        errs = r.c1.errors + r.c32.errors + r.c64.errors
        rows.append([
            r.name, f"{r.c32.rps:,.0f}", f"{r.c64.rps:,.0f}",
            f"{_ms(r.c32.p50)} / {_ms(r.c32.p99)}", f"{_ms(r.c64.p50)} / {_ms(r.c64.p99)}",
            f"{_ms(r.c1.p50)} ({added})", rss, cpu, per_req, f"{vs_relay} / {vs_direct}",
            str(errs),
        ])  # fmt: skip
    table = md_table(
        [
            "target", "req/s c32", "req/s c64", "p50 / p99 c32 (ms)", "p50 / p99 c64 (ms)",
            "p50 c1 (added) ms", "RSS rest / peak MiB", "CPU c32 (cpu0 busy)", "CPU µs/req",
            "c32 vs relay / direct", "errors",
        ],
        rows,
    )  # fmt: skip
    gaps = _gaps(results, paired)
    return f"""## Edge overhead

Command: `./dev bench overhead --seconds {seconds:g} --rounds {len(paired)}` — {info["date"]}

Machine: {info["machine"]}. Load: {info["load"]}.

Setup: nginx (1 worker) answers a fixed {len(nginx.chat_completion_body())}-byte
chat.completion on CPU 1; `wrk -t1` with a POST script (chat body) also on CPU 1; the proxy
under test alone on CPU 0 (`taskset`). Each target: 2 s warm-up, then 1 connection
({c1_seconds(seconds)} s), 32 and 64 connections ({seconds:g} s each). "Added" is p50 at
one connection minus direct's. RSS is the whole process group (VmRSS), at rest after warm-up
and peak under load. "CPU c32" is the proxy's CPU time per wall second at 32 connections
(100% = its core is saturated, so req/s is the proxy's own limit); in brackets how busy CPU 0
was in total (more than the proxy's share means other processes ran there too). "CPU µs/req"
is the proxy's CPU time per request at 32 connections: the cost of one request, which other
load on the machine changes far less than req/s. Direct is measured first and again last, to
show drift during the run.

{table}

### Against the targets
{gaps}
"""


def _gaps(results: list[Measured], paired: list[tuple[float, float, float, float]]) -> str:
    by = {r.name: r for r in results}
    relay = by.get("bare aiohttp+uvloop relay")
    edge = by.get("Corral edge (1 worker)")
    edge2 = by.get("Corral edge (--workers 2, CPUs 0-1)")
    relay2 = by.get("2 relay processes (CPUs 0-1)")
    direct = results[0]
    if edge is None or edge.c32 is None or edge.c1 is None:
        return "- The edge was not measured in this run (see the table)."
    lines = []
    if relay and relay.c32:
        ratio = edge.c32.rps / relay.c32.rps
        lines.append(
            f"- req/s at 32 connections: {ratio * 100:.0f}% of the bare relay "
            f"(target ≥ 80%): {'met' if ratio >= 0.8 else 'NOT met'}."
        )
    if relay and relay.cpu_c32 and relay.c32 and edge.cpu_c32:
        e_us = edge.cpu_c32 / edge.c32.rps * 1e6
        r_us = relay.cpu_c32 / relay.c32.rps * 1e6
        lines.append(
            f"- CPU per request at 32 connections: edge {e_us:.0f} µs, relay {r_us:.0f} µs: "
            f"the edge does {r_us / e_us * 100:.0f}% of the relay's work per CPU second "
            f"(target ≥ 80%): {'met' if r_us / e_us >= 0.8 else 'NOT met'}."
        )
    if paired:
        ratios = sorted(e / r for r, e, _, _ in paired)
        median = ratios[len(ratios) // 2]
        pairs = ", ".join(f"{e:,.0f}/{r:,.0f}" for r, e, _, _ in paired)
        cpu_ratios = sorted(rc / ec for _, _, rc, ec in paired if ec > 0)
        cpu_median = cpu_ratios[len(cpu_ratios) // 2] if cpu_ratios else 0.0
        lines.append(
            f"- paired rounds (relay and edge loaded in turn, 5 s each, edge/relay req/s: "
            f"{pairs}): median ratio {median * 100:.0f}% (target ≥ 80%): "
            f"{'met' if median >= 0.8 else 'NOT met'}; by CPU per request (relay/edge, "
            f"{', '.join(f'{rc * 1e6:.0f}/{ec * 1e6:.0f} µs' for _, _, rc, ec in paired)}): "
            f"median {cpu_median * 100:.0f}%."
        )
    if direct.c1:
        added = (edge.c1.p50 - direct.c1.p50) * 1e3
        lines.append(
            f"- added p50 at one connection: {added:.3f} ms (target ≤ 0.5 ms): "
            f"{'met' if added <= 0.5 else 'NOT met'}."
        )
    if edge.rss_peak is not None:
        lines.append(
            f"- RSS: {edge.rss_rest:.0f} MiB at rest, {edge.rss_peak:.0f} MiB peak under load "
            f"(target ≤ 60 MB ≈ 57 MiB): {'met' if edge.rss_peak <= 57.2 else 'NOT met'}."
        )
    if edge2 and edge2.c32 and relay2 and relay2.c32 and relay and relay.c32:
        lines.append(
            f"- scaling: --workers 2 gives {edge2.c32.rps / edge.c32.rps:.2f}x one worker; "
            f"two relays give {relay2.c32.rps / relay.c32.rps:.2f}x one relay. With two cores "
            "shared with nginx and wrk this cannot show linear scaling; it shows whether the "
            "workers share the port and the load."
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench overhead", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="per load level (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="paired relay/edge rounds")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    results, info, paired = run(args.seconds, args.rounds)
    text = report(results, info, args.seconds, paired)
    print(text)
    if not args.no_write:
        write_section("overhead", text)
    return 0
