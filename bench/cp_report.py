"""What bench/controlplane.py measured (Result) and the markdown section it writes of it
(docs/BENCHMARKS.md): the trials' delays against the 1 s target, and the steady state's CPU,
RSS, etcd writes and snapshots.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from bench.common import md_table, percentile
from bench.cp_agents import MODELS


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
