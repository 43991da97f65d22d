"""What the usage bench measured (EdgeResult, PgResult) and how its section of
docs/BENCHMARKS.md shows it (report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.common import md_table

WRITERS = 3


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


@dataclass
class EdgeResult:
    # per round: off rps, on rps, off CPU s/request, on CPU s/request
    pairs: list[tuple[float, float, float, float]]
    together: list[tuple[float, float, float, float]]  # the same, both edges loaded at once
    c1: list[tuple[float, float]]  # per round: off p50, on p50 at one connection
    rss: list[float]
    rows: int
    answered: int
    keys: int

    @property
    def ratio(self) -> float:
        return median([b / a for a, b, _, _ in self.pairs])

    @property
    def cpu_ratio(self) -> float:
        """Requests per CPU second, on / off: the throughput ratio on a machine to itself."""
        return median([ca / cb for _, _, ca, cb in self.pairs])

    @property
    def together_ratio(self) -> float:
        """Requests per CPU second, on / off, the two loaded at once (median of rounds)."""
        return median([ca / cb for _, _, ca, cb in self.together])

    @property
    def pooled_cpu_ratio(self) -> float:
        return sum(ca for _, _, ca, _ in self.pairs) / sum(cb for _, _, _, cb in self.pairs)

    @property
    def added_p50(self) -> float:
        return median([on - off for off, on in self.c1])


@dataclass
class PgResult:
    writers: list[dict[str, Any]]
    rows: int
    sent: int
    elapsed: float
    rate: float  # offered per writer


def report(
    info: dict[str, str], e: EdgeResult, pg: PgResult, cmd: str, parts: dict[str, float]
) -> str:
    rows = [
        [f"round {i + 1} ({'off' if i % 2 == 0 else 'on'} first)", f"{a:,.0f}", f"{b:,.0f}",
         f"{b / a:.2f}", f"{ca * 1e6:.0f}", f"{cb * 1e6:.0f}", f"{ca / cb:.2f}",
         f"{p0 * 1e3:.3f}", f"{p1 * 1e3:.3f}"]
        for i, ((a, b, ca, cb), (p0, p1)) in enumerate(zip(e.pairs, e.c1, strict=True))
    ]  # fmt: skip
    together = [
        [f"round {i + 1}", f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}", f"{ca * 1e6:.0f}",
         f"{cb * 1e6:.0f}", f"{ca / cb:.2f}"]
        for i, (a, b, ca, cb) in enumerate(e.together)
    ]  # fmt: skip
    headers = ["", "off req/s", "on req/s", "ratio", "off CPU µs/req", "on CPU µs/req",
               "req/CPU-s ratio", "off c1 p50 ms", "on c1 p50 ms"]  # fmt: skip
    pg_rows = [
        [str(r["edge"]), f"{r['sent']:,}", f"{r['written']:,}", str(r["spooled"]),
         str(r["dropped"]), f"{float(r['elapsed']):.1f}"]
        for r in pg.writers
    ]  # fmt: skip
    added = e.added_p50 * 1e3
    after = ", ".join(f"{x:.1f}" for x in e.rss[1:])
    growth = max(e.rss) - e.rss[0]
    rate = pg.sent / pg.elapsed
    return f"""## Usage records (`./dev bench usage`)

`{cmd}` at `{info["commit"]}`, {info["date"]}. {info["machine"]}. {info["load"]}
Whatever else ran on the machine (load above) weighed on edges neighbouring in time alike:
compare the ratios (edges loaded in turn), not absolute numbers.

Edge "on" (a policy of {e.keys:,} virtual keys, every request's key checked; usage records
into the SQLite sink) vs the same edge "off" (open, `usage.sink: off`); nginx backend; per
round, wrk at 32 connections on each edge in turn (the first alternating), then one
connection on each; {len(e.pairs)} rounds:

{md_table(headers, rows)}

The same rounds' second half: both edges loaded at once, each by its own wrk at 32
connections, sharing CPU 0 (so whatever else runs on the machine weighs on both alike, at the
same moments; each gets about half the CPU):

{md_table(headers[:7], together)}

- Throughput ratio, loaded in turn, median of rounds: **{e.ratio:.2f}** by wall-clock req/s;
  **{e.cpu_ratio:.2f}** by requests per CPU second of the edge process (its writer thread
  included); all rounds pooled (mean CPU per request, off / on): **{e.pooled_cpu_ratio:.2f}**.
- Loaded at once, median of rounds: **{e.together_ratio:.2f}** by requests per CPU second
  (target ≥ 0.90), the figure least moved by the machine's other work.
- Added p50 at one connection, median of the rounds' differences: **{added:+.3f} ms**
  (target ≤ 0.1 ms).
- RSS of the edge "on": {e.rss[0]:.1f} MiB after warm-up, then {after} MiB after
  each round: growth **{growth:+.1f} MiB** (target ≤ 10 MiB).
- Rows of the keys' team in SQLite after a clean stop: {e.rows:,} for {e.answered:,}
  requests wrk counted as answered (warm-up included; wrk does not count the requests still
  in flight when a run ends, which the edge answered and recorded: rows ≥ answered).

Per-request cost of the record's parts (µs, best of 3 runs of 50,000 in the benchmark's own
process on the busy CPU 1; the sink's own write is in the CPU figures above; the Call and the
tokens are in both edges, the rest only in "on"):

{md_table(["part", "µs"], [[k, f"{v:.2f}"] for k, v in parts.items()])}

PostgreSQL (local, fsync off), {WRITERS} writer processes (the real recorder and sink, as 3
edges) each recording at a paced rate of {pg.rate:,.0f}/s ({WRITERS * pg.rate:,.0f}/s offered;
the seconds count until the last batch is written):

{md_table(["writer", "sent", "written", "spooled", "dropped", "seconds"], pg_rows)}

- **{rate:,.0f} records/s** sustained in total ({pg.sent:,} sent in {pg.elapsed:.1f} s); rows
  found: {pg.rows:,} (target 20,000/s, no loss).
"""
