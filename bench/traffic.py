"""Traffic summaries and the dashboard: what they cost the edge and the control plane.

``./dev bench traffic [--seconds 5] [--rounds 3] [--edges 50] [--cp-seconds 30] [--no-write]``

1. Edge: nginx answers a fixed chat.completion on CPU 1 (wrk too); two `corral edge`
   processes on CPU 0 fed by bench/snapshot_server.py (which acknowledges traffic reports):
   **off** (traffic_interval_seconds 0: nothing counted, nothing sent) and **on** (5 s
   slices, as shipped). Loaded in turn at 32 connections: req/s and CPU per request; the
   added CPU per request x 5,000 req/s is the share of a core reporting costs at 5k req/s.
2. Control plane: one etcd member and `corral controlplane --store etcd` on CPU 0; N
   simulated edges (this process, CPU 1) each report a 5 s slice of 10 backends x 3 models
   every 5 s: the control plane's and etcd's CPU and etcd's write rate.
3. Dashboard: 1,000 backends registered in that etcd (as agents write them) and 20 edges
   reporting traffic for all of them; GET /dashboard/api/state timed just after the traffic
   view's 1 s answer cache expired (cold) and right after another request (warm), once
   with the edges stopped (static data) and once while they keep reporting (1,000 cells a
   record, a record per edge every 5 s), with the control plane's event-loop lag.

`--no-edge` skips part 1 (to compare control planes quickly).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    run_info,
    write_section,
)
from bench.overhead import CHAT_REQUEST
from bench.procs import Proc, Procs, free_port, pin_self, wait_http, wait_port, workspace
from bench.traffic_report import dashboard_table, report
from bench.traffic_sim import (
    REPORT_SECONDS,
    gc_during,
    gc_pauses,
    lags_during,
    loop_lags,
    register_backends,
    simulate_edges,
)

TOKEN = "bench-admin-token"


# -- 1. the edge ---------------------------------------------------------------------------


def _edge(procs: Procs, name: str, cp_port: int, config: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = [PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--controlplane", f"127.0.0.1:{cp_port}",
            "--workers", "1", "--log-level", "WARNING"]  # fmt: skip
    proc = procs.start(name, argv, cpus=PROXY_CPU)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, timeout=60)
    return proc, base


def edge_cost(tmp: Path, procs: Procs, seconds: float, rounds: int) -> dict[str, Any]:
    _, snap_port = nginx.backend_with_snapshots(procs)
    edges = {}
    for name, interval in (("off", 0.0), ("on", REPORT_SECONDS)):
        config = tmp / f"edge-{name}.yaml"
        config.write_text(
            f'edge:\n  usage:\n    sink: "off"\n  observability:\n'
            f"    traffic_interval_seconds: {interval}\n"
        )
        edges[name] = _edge(procs, f"edge-{name}", snap_port, config)
    script = wrk.post_script(tmp / "chat.lua", CHAT_REQUEST)
    chat = "/v1/chat/completions"
    for _, base in edges.values():
        warm = wrk.run(base + chat, script, connections=32, seconds=2, cpus=LOAD_CPU)
        if warm.errors:
            raise BenchError(f"{base}: {warm.errors} errors in the warm-up")
    pairs: list[dict[str, tuple[float, float]]] = []
    for _ in range(rounds):
        one: dict[str, tuple[float, float]] = {}
        for name, (proc, base) in edges.items():
            cpu0 = proc.cpu_seconds()
            result = wrk.run(base + chat, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
            if result.errors:
                raise BenchError(f"{name}: {result.errors} errors")
            one[name] = (result.rps, (proc.cpu_seconds() - cpu0) / result.requests)
        pairs.append(one)
        print(f"  round: off {one['off'][0]:,.0f} req/s, on {one['on'][0]:,.0f} req/s", flush=True)
    return {"pairs": pairs, "micro": hot_path_cost()}


def hot_path_cost(calls: int = 200_000) -> dict[str, float]:
    """Nanoseconds per TrafficRecorder.finished (enabled and off), and per cut of a slice
    with 30 and 1,000 cells, in this process."""
    import timeit

    from edge.gateway.call import Call
    from edge.traffic import TrafficRecorder

    call = Call("id", "id", 0.0, 0.0, "chat", ttft=0.05, prompt_tokens=20, completion_tokens=9)
    on, off = TrafficRecorder(), TrafficRecorder()
    off.enabled = False
    out: dict[str, float] = {}
    for name, rec in (("finished (on)", on), ("finished (off)", off)):

        def finish(r: TrafficRecorder = rec) -> None:
            r.finished(call, "m", "gpu-a", 200, 0.12)

        best = min(timeit.repeat(finish, number=calls, repeat=5))
        out[name] = best / calls * 1e9
    for cells in (30, 1000):
        rec = TrafficRecorder()
        timings = []
        for _ in range(20):
            for i in range(cells):
                rec.finished(call, f"m{i % 3}", f"b{i}", 200, 0.1 + i / 1e4)
            started = time.perf_counter()
            rec.cut({"sticky": 10}, [("b1", 1.0)], {"b1": 2})
            timings.append(time.perf_counter() - started)
            rec.pending.clear()
        out[f"cut, {cells} cells (µs)"] = statistics.median(timings) * 1e6
    return out


# -- 2 and 3. the control plane -------------------------------------------------------------


async def time_dashboard(url: str, metrics_url: str, samples: int, cpu: Any) -> dict[str, Any]:
    """Wall time of GET url (cold: past the 1 s answer cache; warm: right after), the
    control plane's CPU time per cold request (it does nothing else meanwhile) and its
    collector's pauses over the samples."""
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}"}
    cold: list[float] = []
    warm: list[float] = []
    cold_cpu: list[float] = []
    size = 0
    listed = 1 << 30  # the fewest backends any answer listed
    async with aiohttp.ClientSession() as http:
        # Warm-up: the first answer also builds the per-bucket sums of every bucket.
        async with http.get(url, headers=headers) as resp:
            await resp.read()
        async with http.get(metrics_url) as resp:
            text = await resp.text()
            gc_before, lag_before = gc_pauses(text), loop_lags(text)
        cpu0, wall0 = cpu(), time.monotonic()
        for _ in range(samples):
            await asyncio.sleep(1.05)  # past the traffic view's 1 s answer cache
            for into in (cold, warm):
                before = cpu()
                started = time.perf_counter()
                async with http.get(url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise BenchError(f"dashboard answered {resp.status}: {body[:200]!r}")
                into.append(time.perf_counter() - started)
                if into is cold:
                    cold_cpu.append(cpu() - before)
            size = len(body)
            listed = min(listed, body.count(b'"name":"gpu-'))
        busy = (cpu() - cpu0) / (time.monotonic() - wall0)
        async with http.get(metrics_url) as resp:
            text = await resp.text()
            gc = gc_during(gc_before, gc_pauses(text))
            lag = lags_during(lag_before, loop_lags(text))
    return {"cold": cold, "warm": warm, "cold_cpu": cold_cpu, "bytes": size,
            "backends": listed, "gc": gc, "lag": lag, "busy": busy}  # fmt: skip


def controlplane_cost(tmp: Path, procs: Procs, args: argparse.Namespace) -> dict[str, Any]:
    from bench.controlplane import etcd_revision
    from tests.support.etcd import etcd_binary

    cport, pport = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{cport}"
    etcd = procs.start(
        "etcd",
        [etcd_binary(), "--name", "bench", "--data-dir", str(tmp / "etcd-data"),
         "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
         "--listen-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"bench=http://127.0.0.1:{pport}", "--log-level", "warn"],
        cpus=PROXY_CPU,
    )  # fmt: skip
    wait_port(cport, etcd)
    token_file = tmp / "admin.token"
    token_file.write_text(TOKEN)
    cp_port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{cp_port}"
    cp = procs.start(
        "controlplane",
        [PYTHON, "-m", "corral.cli", "controlplane", "--store", "etcd", "--etcd", etcd_url,
         "--listen", target, "--metrics-listen", f"127.0.0.1:{http_port}",
         "--admin-token-file", str(token_file), "--log-level", "WARNING"],
        cpus=PROXY_CPU,
    )  # fmt: skip
    wait_port(cp_port, cp)
    wait_http(f"http://127.0.0.1:{http_port}/metrics", cp)
    time.sleep(1.0)
    backends = [f"gpu-{i:04d}" for i in range(10)]
    models = ["llama-8b", "qwen-7b", "mistral-7b"]
    cpu0, ecpu0, rev0 = cp.cpu_seconds(), etcd.cpu_seconds(), etcd_revision(etcd_url)
    started = time.monotonic()
    sent = asyncio.run(simulate_edges(target, args.edges, backends, models, args.cp_seconds))
    wall = time.monotonic() - started
    result: dict[str, Any] = {
        "edges": args.edges,
        "reports": sent,
        "wall": wall,
        "cp_cpu": (cp.cpu_seconds() - cpu0) / wall,
        "etcd_cpu": (etcd.cpu_seconds() - ecpu0) / wall,
        "writes": (etcd_revision(etcd_url) - rev0) / wall,
        "rss": cp.rss_mib(),
    }
    print(f"  control plane: {result['cp_cpu'] * 100:.1f}% of a core for {args.edges} edges")

    async def dashboard() -> dict[str, Any]:
        store = await register_backends(etcd_url, 1000)
        try:
            names = [f"gpu-{i:04d}" for i in range(1000)]
            await simulate_edges(target, 20, names, ["model"], REPORT_SECONDS + 1)
            urls = (f"http://127.0.0.1:{http_port}/dashboard/api/state",
                    f"http://127.0.0.1:{http_port}/metrics")  # fmt: skip
            static = await time_dashboard(*urls, args.samples, cp.cpu_seconds)
            # The same while the edges keep reporting: every answer competes with the
            # intake of their records (1,000 cells each) for the control plane's loop.
            edges = asyncio.create_task(simulate_edges(target, 20, names, ["model"], 1e9))
            try:
                await asyncio.sleep(REPORT_SECONDS + 1)  # every edge reporting again
                static["live"] = await time_dashboard(*urls, args.samples, cp.cpu_seconds)
            finally:
                edges.cancel()
                await asyncio.gather(edges, return_exceptions=True)
            return static
        finally:
            await store.close()

    result["dashboard"] = asyncio.run(dashboard())
    cp.check_alive()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import ensure_tools

    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info: dict[str, Any] = dict(run_info())
    if not args.no_edge:
        with workspace("traffic") as (tmp, procs):
            info["edge"] = edge_cost(tmp, procs, args.seconds, args.rounds)
    with workspace("traffic-cp") as (tmp, procs):
        info["cp"] = controlplane_cost(tmp, procs, args)
    info["args"] = vars(args)
    return info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench traffic", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edges", type=int, default=50)
    parser.add_argument("--cp-seconds", type=float, default=30.0)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-edge", action="store_true", help="skip the edge's part")
    args = parser.parse_args(argv)
    info = run(args)
    commit = os.popen("git rev-parse --short HEAD").read().strip() or "?"
    if args.no_edge:  # a partial run: printed, never written
        cp = info["cp"]
        print(f"{info['load']}; control plane {cp['cp_cpu'] * 100:.1f}% of a core for "
              f"{cp['edges']} edges\n{dashboard_table(cp['dashboard'])}")  # fmt: skip
        return 0
    body = report(info, commit)
    print(body)
    if not args.no_write:
        write_section("traffic", body)
    return 0
