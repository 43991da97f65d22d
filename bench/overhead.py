"""Edge overhead: Corral's edge beside direct calls, nginx and the lean Python relay, one run.

``./dev bench overhead [--seconds 6] [--rounds 3] [--scaling] [--no-write]``

nginx answers a fixed ~400-byte chat.completion on CPU 1; wrk (one thread, POST script) also
runs on CPU 1; each proxy under test runs alone on CPU 0. Targets, in turn: the backend
directly, the lean aiohttp relay (bench/lean_relay.py, the floor issue 18 measures against),
nginx as a reverse proxy, the edge with the gateway off, the edge with the gateway on (a key,
limits counted in-process, usage records to SQLite, metrics), `corral up` with the same
gateway, then paired lean/edge rounds. For every target: req/s and p50/p99 at 32 and 64
connections, p50 at one connection (added latency = minus direct's), RSS at rest and the
peak under load, and the proxy's CPU use during the 32-connection run. `--scaling` adds the
gateway-on edge with --workers 2 and two relay processes over CPUs 0-1 (this machine has two
cores, shared with nginx and wrk: the trend only).
"""

from __future__ import annotations

import argparse
import threading
import time
import urllib.error
import urllib.request
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
    commit,
    cpu_times,
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


KEY = "sk-bench-overhead-not-real"
# The gateway off: no keys, no limits, no usage records (metrics are always on).
GATEWAY_OFF = 'edge:\n  usage:\n    sink: "off"\n'
# The gateway on: a static key, limits counted in this process, usage records to SQLite.
GATEWAY_ON = """edge:
  usage:
    sink: sqlite
    path: {db}
  limits:
    default_key:
      rpm: 1000000000
      tpm: 1000000000000
      budget_tokens: 1000000000000
      budget_period: day
"""


def start_edge(
    procs: Procs, name: str, cp_port: int, workers: int, cpus: str, config: Path, keys: Path | None
) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
        "--listen", f"127.0.0.1:{port}",
        "--controlplane", f"127.0.0.1:{cp_port}",
        "--workers", str(workers),
        "--log-level", "WARNING",
    ]  # fmt: skip
    if keys is not None:
        argv += ["--api-key-file", str(keys)]
    proc = procs.start(name, argv, cpus=cpus)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, timeout=60)
    return proc, base


def start_up(procs: Procs, backend: str, config: Path) -> tuple[Proc, str]:
    """`corral up`: control plane, agent and edge in one process, answering once the agent
    has reported the backend's model."""
    port, cp_port = free_port(), free_port()
    argv = [PYTHON, "-m", "corral.cli", "up", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--controlplane-listen", f"127.0.0.1:{cp_port}",
            "--backend", backend, "--no-discover"]  # fmt: skip
    proc = procs.start("up", argv, cpus=PROXY_CPU)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        proc.check_alive()
        try:
            req = urllib.request.Request(
                base + "/v1/chat/completions",
                CHAT_REQUEST,
                {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
            )
            with urllib.request.urlopen(req, timeout=2) as answer:
                if answer.status == 200:
                    return proc, base
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise BenchError("corral up did not serve the backend's model within 60 s")
        time.sleep(0.3)


def lean(procs: Procs, backend: str, count: int, cpus: list[str]) -> tuple[list[Proc], str]:
    port = free_port()
    group = []
    for i in range(count):
        argv = [PYTHON, "-m", "bench.lean_relay", "--listen", f"127.0.0.1:{port}",
                "--upstream", backend]  # fmt: skip
        group.append(procs.start(f"lean{count}-{i}", argv, cpus=cpus[i]))
    for p in group:
        wait_http(f"http://127.0.0.1:{port}/health", p)
    return group, f"http://127.0.0.1:{port}"


AIOHTTP = "  upstream_client: aiohttp\n"
LEAN = "lean aiohttp+uvloop relay"
EDGE_OFF = "Corral edge, gateway off"
EDGE_ON = "Corral edge, gateway on, upstream_client: aiohttp"
EDGE_FAST = "Corral edge, gateway on"
UP = "corral up (gateway on)"
EDGE_ON2 = "Corral edge, gateway on, --workers 2 (CPUs 0-1)"
LEAN2 = "2 lean relay processes (CPUs 0-1)"


def run(
    seconds: float, rounds: int, scaling: bool
) -> tuple[list[Measured], dict[str, str], list[tuple[float, float, float, float]]]:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info = {"machine": machine(), "load": load_note(), "date": now_utc(), "commit": commit()}
    print(f"{info['machine']}\n{info['load']}", flush=True)
    results: list[Measured] = []
    paired: list[tuple[float, float, float, float]] = []
    with workspace("overhead") as (tmp, procs):
        script = wrk.post_script(tmp / "post.lua", CHAT_REQUEST)
        keyed = wrk.post_script(tmp / "keyed.lua", CHAT_REQUEST, {"Authorization": f"Bearer {KEY}"})
        keys = tmp / "keys.txt"
        keys.write_text(KEY + "\n")
        keys.chmod(0o600)
        off = tmp / "off.yaml"
        off.write_text(GATEWAY_OFF)
        on = tmp / "on.yaml"
        on.write_text(GATEWAY_ON.format(db=tmp / "usage.db"))
        old = tmp / "aiohttp.yaml"
        old.write_text(GATEWAY_ON.format(db=tmp / "aiohttp-usage.db") + AIOHTTP)
        up_config = tmp / "up.yaml"
        up_config.write_text(
            GATEWAY_ON.format(db=tmp / "up-usage.db").replace(
                "edge:\n", f"edge:\n  api_keys_file: {keys}\n", 1
            )
        )
        backend, snap_port = nginx.backend_with_snapshots(procs)
        chat = "/v1/chat/completions"
        results.append(measure("direct to nginx backend", backend + chat, None, script, seconds))

        def one(
            name: str,
            starter: Callable[[], tuple[Proc | list[Proc], str]],
            note: str,
            lua: Path = script,
        ) -> None:
            try:
                procs_or_one, base = starter()
            except BenchError as exc:
                results.append(Measured(name, note, error=str(exc).splitlines()[0][:200]))
                print(f"  {name}: could not start: {exc}", flush=True)
                return
            group = procs_or_one if isinstance(procs_or_one, list) else [procs_or_one]
            proc: Sampled = group[0] if len(group) == 1 else _Group(group)
            try:
                results.append(measure(name, base + chat, proc, lua, seconds, note))
            finally:
                for p in group:
                    procs.stop(p)

        def nginx_proxy() -> tuple[Proc, str]:
            port = free_port()
            proc = nginx.start(
                procs,
                "nginx-proxy",
                lambda d: nginx.proxy_conf(d, port, [backend.removeprefix("http://")]),
                PROXY_CPU,
                None,
            )
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            return proc, f"http://127.0.0.1:{port}"

        one(LEAN, lambda: lean(procs, backend, 1, [PROXY_CPU]), "bench/lean_relay.py")
        one("nginx reverse proxy (1 worker)", nginx_proxy, "keepalive upstream")
        one(
            EDGE_OFF,
            lambda: start_edge(procs, "edge-off", snap_port, 1, PROXY_CPU, off, None),
            "no keys, limits or usage records",
        )
        one(
            EDGE_ON,
            lambda: start_edge(procs, "edge-aiohttp", snap_port, 1, PROXY_CPU, old, keys),
            "the same, aiohttp's client upstream",
            keyed,
        )
        one(
            EDGE_FAST,
            lambda: start_edge(procs, "edge-on", snap_port, 1, PROXY_CPU, on, keys),
            "key, local limits, SQLite usage, metrics; edge/h1pool.py upstream",
            keyed,
        )
        one(UP, lambda: start_up(procs, backend, up_config), "one process, CPU 0", keyed)
        paired.extend(paired_rounds(procs, backend, snap_port, keyed, rounds, on, keys))
        if scaling:
            one(
                EDGE_ON2,
                lambda: start_edge(
                    procs, "edge2", snap_port, 2, f"{PROXY_CPU},{LOAD_CPU}", on, keys
                ),
                "shares CPU 1 with nginx and wrk",
                keyed,
            )
            one(
                LEAN2,
                lambda: lean(procs, backend, 2, [PROXY_CPU, LOAD_CPU]),
                "shares CPU 1 with nginx and wrk",
            )
        results.append(
            measure("direct to nginx backend (again)", backend + chat, None, script, seconds)
        )
    return results, info, paired


def paired_rounds(
    procs: Procs,
    backend: str,
    snap_port: int,
    script: Path,
    rounds: int,
    config: Path,
    keys: Path,
) -> list[tuple[float, float, float, float]]:
    """The lean relay and the gateway-on edge both up on CPU 0, loaded in turn at 32
    connections, `rounds` times: the ratio of neighbours in time is robust to load that comes
    and goes on the machine."""
    if rounds <= 0:
        return []
    print("  paired lean relay / edge (gateway on) rounds at c32: ", end="", flush=True)
    group, relay_base = lean(procs, backend, 1, [PROXY_CPU])
    relay = group[0]
    edge, base = start_edge(procs, "edge-paired", snap_port, 1, PROXY_CPU, config, keys)
    chat = "/v1/chat/completions"
    relay_url, edge_url = relay_base + chat, base + chat
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
    scaling: bool = False,
) -> str:
    direct = results[0]
    relay = next((r for r in results if r.name == LEAN and r.c32), None)
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
    scaling_flag = " --scaling" if scaling else ""
    return f"""## Edge overhead

Command: `./dev bench overhead --seconds {seconds:g} --rounds {len(paired)}{scaling_flag}` — \
{info["date"]}, commit {info["commit"]}

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
    """Issue 18's targets, for the edge with the gateway on against the lean relay."""
    by = {r.name: r for r in results}
    return "\n".join(
        _gaps_of(by.get(name), by.get(LEAN), results[0], by, paired if name == EDGE_FAST else [])
        for name in (EDGE_FAST, EDGE_ON)
    )


def _gaps_of(
    edge: Measured | None,
    relay: Measured | None,
    direct: Measured,
    by: dict[str, Measured],
    paired: list[tuple[float, float, float, float]],
) -> str:
    if edge is None:
        return ""
    edge2, relay2 = by.get(EDGE_ON2), by.get(LEAN2)
    if edge is None or edge.c32 is None or edge.c1 is None:
        return f"- {edge.name}: not measured in this run (see the table)."
    lines = [f"**{edge.name}**:"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if relay and relay.c32 and relay.c1:
        ratio = edge.c32.rps / relay.c32.rps
        lines.append(f"- req/s at 32 connections: {ratio:.2f}x the lean relay (target ≥ 1.5x): "
                     f"{verdict(ratio >= 1.5)} in the table (measured minutes apart: on a "
                     "busy machine read the paired rounds).")  # fmt: skip
        if relay.cpu_c32 and edge.cpu_c32:
            per = (relay.cpu_c32 / relay.c32.rps) / (edge.cpu_c32 / edge.c32.rps)
            lines.append(f"- CPU per request at 32 connections: the relay's is {per:.2f}x the "
                         f"edge's (≥ 1.5x would match the req/s target): "
                         f"{verdict(per >= 1.5)}.")  # fmt: skip
        recip = relay.c1.p50 / edge.c1.p50
        lines.append(f"- reciprocal latency at one connection (relay p50 / edge p50): "
                     f"{recip:.2f}x (target ≥ 1.3x): {verdict(recip >= 1.3)}.")  # fmt: skip
        lines.append(f"- p99 at 32 connections: edge {_ms(edge.c32.p99)} ms, lean relay "
                     f"{_ms(relay.c32.p99)} ms (target ≤ the relay's): "
                     f"{verdict(edge.c32.p99 <= relay.c32.p99)}.")  # fmt: skip
    if paired:
        ratios = sorted(e / r for r, e, _, _ in paired)
        median = ratios[len(ratios) // 2]
        pairs = ", ".join(f"{e:,.0f}/{r:,.0f}" for r, e, _, _ in paired)
        cpu = ", ".join(f"{rc * 1e6:.0f}/{ec * 1e6:.0f} µs" for _, _, rc, ec in paired)
        lines.append(f"- paired rounds (lean relay and gateway-on edge loaded in turn, 5 s each, "
                     f"edge/relay req/s: {pairs}): median {median:.2f}x (target ≥ 1.5x): "
                     f"{verdict(median >= 1.5)}; CPU per request relay/edge: {cpu}.")  # fmt: skip
    if direct.c1:
        added = (edge.c1.p50 - direct.c1.p50) * 1e3
        lines.append(f"- added p50 at one connection: {added:.3f} ms (target ≤ 0.25 ms): "
                     f"{verdict(added <= 0.25)}.")  # fmt: skip
    if edge.rss_rest is not None:
        lines.append(f"- RSS at rest after warm-up: {edge.rss_rest:.0f} MiB, peak "
                     f"{edge.rss_peak or 0:.0f} MiB (target ≤ 50 MiB at rest): "
                     f"{verdict(edge.rss_rest <= 50)}.")  # fmt: skip
    if (
        edge.name == EDGE_FAST
        and edge2
        and edge2.c32
        and relay2
        and relay2.c32
        and relay
        and relay.c32
    ):
        lines.append(
            f"- scaling: --workers 2 gives {edge2.c32.rps / edge.c32.rps:.2f}x one worker; "
            f"two lean relays give {relay2.c32.rps / relay.c32.rps:.2f}x one relay. Two cores "
            "shared with nginx and wrk cannot show linear scaling; this shows whether the "
            "workers share the port and the load."
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench overhead", description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="per load level (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="paired relay/edge rounds")
    parser.add_argument("--scaling", action="store_true", help="also --workers 2 and 2 relays")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    results, info, paired = run(args.seconds, args.rounds, args.scaling)
    text = report(results, info, args.seconds, paired, args.scaling)
    print(text)
    if not args.no_write:
        write_section("overhead", text)
    return 0
