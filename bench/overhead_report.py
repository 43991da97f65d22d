"""The section bench/overhead.py writes to docs/BENCHMARKS.md: every target's req/s,
latencies, RSS and CPU in one table, then the gateway-on edge against issue 18's targets (the
lean relay's req/s, CPU per request and latency, added latency, RSS at rest, paired rounds,
scaling).
"""

from __future__ import annotations

from bench import nginx
from bench.common import md_table
from bench.overhead_measure import EDGE_FAST, EDGE_ON, EDGE_ON2, LEAN, LEAN2, Measured, c1_seconds


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
