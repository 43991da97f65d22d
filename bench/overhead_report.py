"""The section bench/overhead.py writes to docs/BENCHMARKS.md: every target's req/s,
latencies, RSS and CPU in one table (medians of its rounds), then the gateway-on edge against
issue 18's targets (the lean relay's req/s, CPU per request and latency, added latency, RSS
at rest, scaling) and beside the Rust routers, each ratio the median of the two targets'
ratios round by round.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from bench import nginx
from bench.common import md_table
from bench.overhead_measure import (
    C1_SECONDS,
    EDGE_FAST,
    EDGE_ON,
    EDGE_ON2,
    EDGE_POLL,
    EDGE_PY,
    LEAN,
    LEAN2,
    SGLANG,
    VLLM,
    Measured,
    Round,
)


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.2f}"


def paired(a: Measured, b: Measured, value: Callable[[Round, Round], float]) -> float:
    """The median over the rounds both have of `value(a's round, b's round)`."""
    return median([value(x, y) for x, y in zip(a.rounds, b.rounds, strict=False)])


def paired_c1(a: Measured, b: Measured, value: Callable[[float, float], float]) -> float:
    """The same over the rounds at one connection, of `value(a's p50, b's p50)`."""
    return median([value(x.p50, y.p50) for x, y in zip(a.c1, b.c1, strict=False)])


def _row(r: Measured, direct: Measured, relay: Measured | None) -> list[str]:
    if not r.ok:
        return [r.name, f"failed: {r.error}", *[""] * 12]
    added = (
        "—" if r is direct or not direct.ok
        else f"{paired_c1(direct, r, lambda d, x: x - d) * 1e3:+.3f}"
    )  # fmt: skip
    vs_relay = (
        f"{paired(relay, r, lambda a, b: b.c32.rps / a.c32.rps):.2f}x"
        if relay is not None and relay.ok
        else "n/a"
    )
    vs_direct = f"{paired(direct, r, lambda a, b: b.c32.rps / a.c32.rps):.2f}x"
    rss = "—" if r.rss_rest is None else f"{r.rss_rest:.1f} / {r.rss_peak or 0:.1f}"
    cpus = [x.cpu_c32 for x in r.rounds if x.cpu_c32 is not None]
    cpu = "—" if not cpus else f"{median(cpus) * 100:.0f}%"
    cpu += f" ({r.med(lambda x: x.cpu0_busy) * 100:.0f}%)"
    per_req = r.cpu_per_request()
    return [
        r.name, f"{r.med(lambda x: x.c32.rps):,.0f}",
        " / ".join(f"{x.c32.rps:,.0f}" for x in r.rounds),
        f"{r.med(lambda x: x.c64.rps):,.0f}",
        f"{_ms(r.med(lambda x: x.c32.p50))} / {_ms(r.med(lambda x: x.c32.p99))}",
        f"{_ms(r.med(lambda x: x.c64.p50))} / {_ms(r.med(lambda x: x.c64.p99))}",
        f"{_ms(median([x.p50 for x in r.c1]))} ({added})",
        " / ".join(f"{x.p50 * 1e3:.2f}" for x in r.c1), rss, cpu,
        "—" if per_req is None else f"{per_req * 1e6:.0f}",
        f"{median(r.c1_cpu) * 100:.0f}%" if r.c1_cpu else "—", f"{vs_relay} / {vs_direct}",
        str(r.errors),
    ]  # fmt: skip


def report(
    results: list[Measured],
    info: dict[str, str],
    seconds: float,
    rounds: int,
    scaling: bool = False,
) -> str:
    direct = results[0]
    relay = next((r for r in results if r.name == LEAN and r.ok), None)
    table = md_table(
        [
            "target", "req/s c32", "c32 by round", "req/s c64", "p50 / p99 c32 (ms)",
            "p50 / p99 c64 (ms)", "p50 c1 (added) ms", "p50 c1 by round", "RSS rest / peak MiB",
            "CPU c32 (cpu0 busy)", "CPU µs/req", "CPU c1", "c32 vs relay / direct", "errors",
        ],
        [_row(r, direct, relay) for r in results],
    )  # fmt: skip
    edges = (EDGE_FAST, EDGE_POLL, EDGE_PY, EDGE_ON)
    gaps = "\n".join(_gaps_of(name, results, direct, relay) for name in edges)
    scaling_flag = " --scaling" if scaling else ""
    return f"""## Edge overhead

Command: `./dev bench overhead --seconds {seconds:g} --rounds {rounds}{scaling_flag}` — \
{info["date"]}, commit {info["commit"]}

Machine: {info["machine"]}. Load: {info["load"]}.

Setup: nginx (1 worker) answers a fixed {len(nginx.chat_completion_body())}-byte
chat.completion on CPU 1; `wrk -t1` with a POST script (chat body) also on CPU 1; the proxies
under test on CPU 0 (`taskset`), all started first and warmed up (2 s at 32 connections),
then loaded one at a time, taking turns round by round: {rounds} rounds at 32 and 64
connections ({seconds:g} s each), then {2 * rounds} rounds at one connection ({C1_SECONDS} s
each). Each figure is the median of the target's rounds; "c32 by round" shows them in order.
"Added" is p50 at one connection minus direct's in the same round (median of the rounds);
"p50 c1 by round" shows the target's. RSS is the
whole process group (VmRSS), at rest after warm-up and the peak under load. "CPU c32" is
the proxy's CPU time per wall second at 32 connections (100% = its core is saturated, so
req/s is the proxy's own limit); in brackets how busy CPU 0 was in total (more than the
proxy's share means other processes ran there too). "CPU µs/req" is the proxy's CPU time
per request at 32 connections: the cost of one request, which other load on the machine
changes far less than req/s. "CPU c1" is the proxy's CPU time per wall second at one
connection (busy polling keeps its core busy between requests). "vs relay / direct" is the
median of the round-by-round ratios.

{table}

### Against the targets
{gaps}
"""


def _gaps_of(name: str, results: list[Measured], direct: Measured, relay: Measured | None) -> str:
    """Issue 18's targets for the edge named `name`, against the lean relay."""
    by = {r.name: r for r in results}
    edge = by.get(name)
    if edge is None:
        return ""
    if not edge.ok:
        return f"- {edge.name}: not measured in this run (see the table)."
    lines = [f"**{edge.name}**:"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if relay is not None:
        ratio = paired(relay, edge, lambda r, e: e.c32.rps / r.c32.rps)
        rounds = ", ".join(
            f"{e.c32.rps:,.0f}/{r.c32.rps:,.0f}"
            for r, e in zip(relay.rounds, edge.rounds, strict=False)
        )
        lines.append(f"- req/s at 32 connections: {ratio:.2f}x the lean relay, median of the "
                     f"rounds (edge/relay {rounds}; target ≥ 1.5x): "
                     f"{verdict(ratio >= 1.5)}.")  # fmt: skip
        per = [
            (r.cpu_per_request, e.cpu_per_request)
            for r, e in zip(relay.rounds, edge.rounds, strict=False)
        ]
        if all(r is not None and e is not None for r, e in per):
            cpu_ratio = median([r / e for r, e in per if r is not None and e is not None])
            cpus = ", ".join(f"{(r or 0) * 1e6:.0f}/{(e or 0) * 1e6:.0f} µs" for r, e in per)
            lines.append(f"- CPU per request at 32 connections: the relay's is "
                         f"{cpu_ratio:.2f}x the edge's (relay/edge {cpus}; ≥ 1.5x would "
                         f"match the req/s target): {verdict(cpu_ratio >= 1.5)}.")  # fmt: skip
        recip = paired_c1(relay, edge, lambda r, e: r / e)
        lines.append(f"- reciprocal latency at one connection (relay p50 / edge p50): "
                     f"{recip:.2f}x (target ≥ 1.3x): {verdict(recip >= 1.3)}.")  # fmt: skip
        p99, relay_p99 = edge.med(lambda x: x.c32.p99), relay.med(lambda x: x.c32.p99)
        lines.append(f"- p99 at 32 connections: edge {_ms(p99)} ms, lean relay "
                     f"{_ms(relay_p99)} ms (target ≤ the relay's): "
                     f"{verdict(p99 <= relay_p99)}.")  # fmt: skip
    if direct.ok:
        added = paired_c1(direct, edge, lambda d, e: e - d) * 1e3
        lines.append(f"- added p50 at one connection: {added:.3f} ms (target ≤ 0.25 ms): "
                     f"{verdict(added <= 0.25)}.")  # fmt: skip
    plain = by.get(EDGE_FAST)
    if name == EDGE_POLL and plain is not None and plain.c1_cpu and edge.c1_cpu:
        lines.append(f"- what the polling costs: its CPU at one connection "
                     f"{median(edge.c1_cpu) * 100:.0f}% of a core, against "
                     f"{median(plain.c1_cpu) * 100:.0f}% without (opt-in, off by "
                     "default).")  # fmt: skip
    if edge.rss_rest is not None:
        lines.append(f"- RSS at rest after warm-up: {edge.rss_rest:.1f} MiB, peak "
                     f"{edge.rss_peak or 0:.1f} MiB (target ≤ 50 MiB at rest): "
                     f"{verdict(edge.rss_rest <= 50)}.")  # fmt: skip
    for router in (by.get(VLLM), by.get(SGLANG)) if name == EDGE_FAST else ():
        if router is not None and router.ok and direct.ok:
            share = paired(router, edge, lambda r, e: e.c32.rps / r.c32.rps)
            router_added = paired_c1(direct, router, lambda d, r: r - d) * 1e3
            lines.append(f"- against {router.name}: the edge does {share:.2f}x its req/s at 32 "
                         f"connections (median of the rounds); it adds {router_added:.3f} ms "
                         "at one connection.")  # fmt: skip
    edge2, relay2 = by.get(EDGE_ON2), by.get(LEAN2)
    if name == EDGE_FAST and edge2 and edge2.ok and relay2 and relay2.ok and relay:
        workers = paired(edge, edge2, lambda a, b: b.c32.rps / a.c32.rps)
        relays = paired(relay, relay2, lambda a, b: b.c32.rps / a.c32.rps)
        lines.append(
            f"- scaling: --workers 2 gives {workers:.2f}x one worker; two lean relays give "
            f"{relays:.2f}x one relay. Two cores shared with nginx and wrk cannot show linear "
            "scaling; this shows whether the workers share the port and the load."
        )
    return "\n".join(lines)
