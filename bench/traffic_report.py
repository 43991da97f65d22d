"""The section bench/traffic.py writes to docs/BENCHMARKS.md: what traffic summaries cost
the edge (req/s and CPU per request, off and on) and the control plane (CPU, etcd writes), and
the dashboard's answer times, cold and warm, static and with edges still reporting.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.common import md_table, percentile


def _spread(times: list[float]) -> list[str]:
    picks = (statistics.median(times), percentile(times, 95), percentile(times, 99), max(times))
    return [f"{x * 1000:.0f} ms" for x in picks]


def dashboard_table(dash: dict[str, Any]) -> str:
    """The answer times with the data static and with the edges still reporting."""
    rows = []
    for label, run in (("", dash), (", edges still reporting", dash.get("live"))):
        if run is None:
            continue
        cold, warm, lag = run["cold"], run["warm"], run.get("lag") or {}
        rows += [
            [f"cold (cache expired){label}, {len(cold)} samples", *_spread(cold)],
            [f"control-plane CPU per cold answer{label} (mean of {len(run['cold_cpu'])}; "
             "/proc ticks of 10 ms)",
             f"{statistics.mean(run['cold_cpu']) * 1000:.0f} ms", "", "", ""],
            [f"warm (right after){label}, {len(warm)} samples", *_spread(warm)],
            [f"control-plane CPU over the samples{label}", f"{run['busy'] * 100:.1f}% of a core",
             "", "", ""],
            [f"event-loop lag{label}: ticks ≥ 25 ms, ≥ 50 ms / of all; longest ≤",
             f"{lag['over_25ms']:.0f}, {lag['over_50ms']:.0f} / {lag['ticks']:.0f}"
             if lag else "-", f"{lag['longest_le'] * 1000:g} ms" if lag else "-", "", ""],
        ]  # fmt: skip
    return md_table(["GET /dashboard/api/state, 1,000 backends", "p50", "p95", "p99", "max"], rows)


def report(info: dict[str, Any], commit: str) -> str:
    args = info["args"]
    pairs = info["edge"]["pairs"]
    rows = []
    for i, pair in enumerate(pairs, 1):
        (o_rps, o_cpu), (n_rps, n_cpu) = pair["off"], pair["on"]
        rows.append([
            str(i), f"{o_rps:,.0f}", f"{n_rps:,.0f}", f"{o_cpu * 1e6:.0f}", f"{n_cpu * 1e6:.0f}",
            f"{(n_cpu - o_cpu) * 1e6:+.1f}",
        ])  # fmt: skip
    diffs = [p["on"][1] - p["off"][1] for p in pairs]
    added, lo, hi = statistics.median(diffs), min(diffs), max(diffs)
    verdict = (
        "the rounds disagree in sign, so end to end the cost is below this machine's noise"
        if lo < 0 < hi
        else "consistent across rounds"
    )
    micro = info["edge"]["micro"]
    big_cut = micro["cut, 1000 cells (µs)"]
    per_call = micro["finished (on)"] - micro["finished (off)"]
    cp = info["cp"]
    dash = cp["dashboard"]
    edge_table = md_table(
        ["round", "off req/s c32", "on req/s c32", "off CPU µs/req", "on CPU µs/req",
         "added µs/req"],
        rows,
    )  # fmt: skip
    micro_table = md_table(
        ["operation (in-process)", "cost"],
        [[k, f"{v:.0f} ns" if "µs" not in k else f"{v:.0f} µs"] for k, v in micro.items()],
    )
    cp_table = md_table(
        ["what", "measured"],
        [
            ["simulated edges (1 slice / 5 s, 30 cells each)", str(cp["edges"])],
            ["reports stored", f"{cp['reports']} in {cp['wall']:.0f} s"],
            ["control-plane CPU", f"{cp['cp_cpu'] * 100:.1f}% of a core"],
            ["etcd CPU", f"{cp['etcd_cpu'] * 100:.1f}% of a core"],
            ["etcd revisions/s", f"{cp['writes']:.1f}"],
            ["control-plane RSS after", f"{cp['rss']:.0f} MiB"],
        ],
    )

    dash_table = dashboard_table(dash)
    gc_table = md_table(
        ["collector generation", "collections", "total pause", "mean pause", "≥ 50 ms"],
        [
            [gen, f"{row['count']:.0f}", f"{row['total_ms']:.0f} ms",
             f"{row['total_ms'] / row['count']:.1f} ms" if row["count"] else "-",
             f"{row['over_50ms']:.0f}"]
            for gen, row in dash.get("gc", {}).items()
        ],
    )  # fmt: skip
    return f"""## Traffic summaries and the dashboard

Command: `./dev bench traffic --seconds {args["seconds"]:g} --rounds {args["rounds"]} \
--edges {args["edges"]} --cp-seconds {args["cp_seconds"]:g}` — {info["date"]}, commit `{commit}`

Machine: {info["machine"]}. Load: {info["load"]}. (Other work on the machine moves absolute numbers;
read the paired differences.)

**Edge, reporting off vs on** (nginx backend and `wrk -t1` on CPU 1; two `corral edge` on
CPU 0 with usage records off, fed by bench/snapshot_server.py, which acknowledges reports;
loaded in turn, {args["seconds"]:g} s at 32 connections per round):

{edge_table}

Median of the paired differences: {added * 1e6:+.1f} µs per request (rounds from
{lo * 1e6:+.1f} to {hi * 1e6:+.1f} µs): {verdict}. The cost itself, measured in-process: the
hot path adds **{per_call:.0f} ns per request, {per_call * 5000 / 1e7:.2f}% of a core at
5,000 req/s** (target ≤ 1 %); cutting a slice every 5 s costs
{micro["cut, 30 cells (µs)"] / 1000:.1f} ms at 30 cells and
{big_cut / 1000:.0f} ms at 1,000 cells ({big_cut / 5e6 * 100:.2f}% of a core):

{micro_table}

**Control plane, {cp["edges"]} edges reporting** (one etcd member and `corral controlplane
--store etcd` on CPU 0; the edges simulated by this process on CPU 1, each reporting every
5 s; every report updates two records, a 10 s and a 60 s one, written with the other
reports of the same 0.25 s in one conditional transaction):

{cp_table}

Target: ≤ 5 % of a core for 50 edges.

**Dashboard data endpoint at 1,000 backends** (the same control plane, 1,000 backends
registered in etcd, 20 edges reporting traffic for all of them; answer
{dash["bytes"] / 1024:.0f} KiB, at least {dash["backends"]} backends in every answer). First
with the edges stopped (static data), then while they keep reporting (a 1,000-cell record
per edge every 5 s, merged, written and decoded by the control plane). While the page is
read the control plane rebuilds the document every second off the request path, so a GET
waits only for the loop; the event-loop lag is how late a timer due every 20 ms ran
(`corral_controlplane_loop_lag_seconds`):

{dash_table}

The control plane's garbage-collector pauses over the static samples (from its
`corral_controlplane_gc_pause_seconds` histogram; generation 2 is a full collection, which
stops the event loop for as long as it walks every tracked object):

{gc_table}

Target: ≤ 50 ms. Wall times include waiting for a CPU on this machine; the control plane's
own CPU per answer is the figure to compare across runs.
"""
