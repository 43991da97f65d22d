"""The report of `./dev bench cacheguard` (bench/cacheguard.py measures)."""

from __future__ import annotations

from statistics import median
from typing import Any

from bench.cacheguard_loop import BASELINE, NOTHING_KEPT
from bench.common import md_table


def rounds_table(rounds: list[Any]) -> str:
    return md_table(
        ["prompt", "id prefix", "plain req/s", "both req/s", "ratio", "plain CPU µs/req",
         "both CPU µs/req", "req/CPU-s ratio", "errors"],
        [
            [label, str(run), f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}", f"{ca * 1e6:.0f}",
             f"{cb * 1e6:.0f}", f"{ca / cb:.2f}", str(err)]
            for (label, a, b, ca, cb, err, run) in rounds
        ],
    )  # fmt: skip


def round_ratios(rounds: list[Any], size: str) -> tuple[float, float]:
    """Median both/plain ratios of one prompt's rounds: by req/s, by requests per CPU second."""
    mine = [r for r in rounds if r[0] == size]
    return (
        median([b / a for _, a, b, _, _, _, _ in mine]),
        median([ca / cb for _, _, _, ca, cb, _, _ in mine]),
    )


def report(
    info: dict[str, str],
    m: dict[str, Any],
    scan: Any,
    loop: list[tuple[str, str, float]],
    cmd: str,
) -> str:
    per_kib, sizes = scan
    loop_table = md_table(
        ["prompt", "configuration", "µs per request"],
        [[label, name, f"{us:.1f}" if name == BASELINE else f"{us:+.1f}"]
         for label, name, us in loop],
    )  # fmt: skip
    c1 = m["c1"]
    c1_table = md_table(
        ["edge", "p50 ms", "p99 ms", "req/s", "errors", "edge CPU µs/req"],
        [
            [name, f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}", f"{rps:,.0f}", str(err),
             f"{cpu * 1e6:.0f}"]
            for name, (p50, p99, rps, err, cpu) in c1.items()
        ],
    )  # fmt: skip
    pairs_table = rounds_table(m["pairs"])
    split_table = alone_table(m["split"])
    together_table = rounds_table(m["together"])
    ratios = {
        size: round_ratios(m["pairs"], size) for size in ("short", "1 KiB", "1 KiB card-like")
    }
    once = {size: round_ratios(m["together"], size) for size in ("short", "1 KiB")}
    size_table = md_table(["prompt", "µs per KiB"], [[k, f"{us:.1f}"] for k, us in sizes])
    memory_p50 = c1["memory"][0] * 1e3
    valkey_p50 = c1["valkey"][0] * 1e3
    short, kib, cards = ratios["short"], ratios["1 KiB"], ratios["1 KiB card-like"]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    verdict = (
        f"Targets: in-process hit {met(memory_p50 <= 0.3)}, Valkey hit {met(valkey_p50 <= 1.0)}, "
        f"scan per KiB {met(per_kib <= 100)}, throughput ≥ 0.85 by CPU "
        f"{met(min(once['short'][1], once['1 KiB'][1]) >= 0.85)} loaded at once, "
        f"{met(min(short[1], kib[1]) >= 0.85)} loaded in turn."
    )
    return f"""## Response cache and guardrails (`./dev bench cacheguard`)

`{cmd}` at `{info["commit"]}`, {info["date"]}. {info["machine"]}. {info["load"]}
Whatever else ran on the machine (load above) weighed on the edges of a round alike: compare
edges measured side by side, not absolute numbers.

Hits at one connection, the same ~1 KiB chat request again and again (wrk → edge; `plain`
relays every request to nginx; `memory` answers from the in-process tier; `valkey` from
Valkey/Redis on loopback, its in-process tier 0 bytes); the best of three 2 s runs per edge
(the neighbours' load only adds latency), with the edge process's CPU time per request:

{c1_table}

- In-process hit p50 at the edge: **{memory_p50:.3f} ms** end to end (target ≤ 0.3 ms);
  Valkey hit p50: **{valkey_p50:.3f} ms** (target ≤ 1 ms).

Throughput with cache and guardrails on and no hits (`both`: cache on, guard `pii: redact`
with restore and every detector; every request a body of its own, a short prompt or ~1 KiB
of prompt with numbers, times and ids but no PII, led by an id (`req-`, 8 random digits new
for each pair of runs, a dash and a counter: nothing any detector's pattern can match), so
each is scanned, missed and stored) against `plain`, paired rounds at 32 connections, both
edges sent the same bodies. The `card-like` row leads each ~1 KiB prompt with digits shaped
like a Visa number instead (4, 8 random digits, a dash and a counter of 4-5 digits): every
body's strings are collected and scanned, and ~1 in 10 ids passes Luhn and is redacted (and
restored in the answer):

{pairs_table}

- Throughput ratio, median of rounds (target ≥ 0.85): short prompt (~30 characters)
  **{short[0]:.2f}** by wall-clock req/s, **{short[1]:.2f}** by requests per CPU second of the
  edge process; ~1 KiB prompt **{kib[0]:.2f}** and **{kib[1]:.2f}**; ~1 KiB with card-like
  ids (not a target row: PII-shaped data scanned and sometimes redacted) **{cards[0]:.2f}**
  and **{cards[1]:.2f}**.

The same two edges loaded at once, each by its own wrk at 32 connections with the same
bodies, sharing CPU 0 (as Usage records does): whatever else runs on the machine weighs on
both alike and at the same moments, where rounds in turn (above) move with it:

{together_table}

- Loaded at once, median of rounds (target ≥ 0.85): short prompt **{once["short"][0]:.2f}**
  by req/s, **{once["short"][1]:.2f}** by requests per CPU second; ~1 KiB
  **{once["1 KiB"][0]:.2f}** and **{once["1 KiB"][1]:.2f}**.

PII scan cost (this process, CPU 1, in CPU time): the detectors as Guard.inspect runs them
(edge/gateway/guard/prefilter.py: one Hyperscan pass, then the sieve's exact steps for the
detectors it flagged) over a number-heavy corpus of prose, code, logs, ids and synthetic PII
in 4 KiB pieces: **{per_kib:.1f} µs per KiB**
(target ≤ 100 µs). Guard.inspect on a chat body (parse excluded; redact, all detectors;
bodies over 32 KiB scanned in a worker thread):

{size_table}

{verdict} Reading these figures: single rounds swing both ways with
whatever else runs on the machine (the rounds are in the tables); the medians are what to
compare.

Where the no-hit cost goes, in this run: the cache alone, the cache keeping nothing (its
in-process tier 0 bytes: key, lookup and bookkeeping, no store; what `cache` adds beyond it
is the store: each answer kept and the oldest evicted) and the guard alone (every detector,
redact with restore), each loaded at once with `plain` as `both` was above, on the same kind
of prompts; CPU µs per request, medians of the rounds:

{split_table}

Where the time went (2026-12-05, paired edges of `432bdaa` and of `18ea733`, load ~3.5):
the guard starts with one Hyperscan pass over the raw body (edge/gateway/guard/prefilter.py:
1.1 µs short, 3.0 µs per ~1 KiB in a tight loop since `a8ca722`, which found the `\\u`
escape in that pass and shrank its database from 1 MB to 166 KB; py-spy under load put
the pass at ~18 µs per ~1 KiB request before, ~7 µs after); a body that is ASCII without
`\\u` escapes and matches no detector's pattern is done then (no string collected or
scanned; the raw pass's card pattern is the wider one: any id led by 2-6 with 13 digits
fails it and has its strings scanned). The id is card-shaped
when its prefix starts as an issuer's numbers do and it has that issuer's fewest digits
(led by 4, 50, 56-59 or 6 with 13 digits, by 3 with 14; 2x and 5[1-5] need 16, more than
these ids have: about 3.5 prefixes in 9 make card-shaped ids, 5 in 9 before `7e28906`):
then the strings are collected and scanned, and the card detector's pattern and checks run
on the id's digits (and ~1 id in 10 whose digits pass an issuer's prefix and Luhn is a card
to the detector: redacted, restored in the answer). Paired in one run (edges of both
commits, 3 rounds of 3 s, medians, CPU µs per request added to `plain`): ids led by 1
(clean), short prompt +98 -> +64, ~1 KiB +140 -> +66 (ratio 0.65 -> 0.73, 0.55 -> 0.73);
ids led by 5 (card-shaped), +101 -> +107 and +134 -> +151 (no gain: the strings are
scanned, and the redactions cost as before), so compare rows with like prefixes. The rest
is the cache's miss path (key: the body without its ignored fields, model kept, as sorted
JSON, BLAKE2b-256; lookup; the store).

The same no-hit paths in a loop, in this process (CPU 1, CPU time), with no edge around them
(bench/cacheguard_loop.py): per request the body parsed, a Call and an Exchange made,
`Gateway.enter` (the guard, then the cache's lookup: a miss), the answer as a web.Response,
`Gateway.leave` (the answer stored) and the cache-header hook; every body and every answer
new bytes, the 64 MiB in-process tier full before the timed runs (`{NOTHING_KEPT}`: a 0-byte
tier, nothing stored). What each configuration adds to the loop without cache and guard
(median of 5 runs of 20,000 requests); the edges above pay several times these, their Python
running between sockets, wake-ups and other requests:

{loop_table}
"""


def alone_table(rows: list[tuple[str, str, float, float]]) -> str:
    """Per prompt and feature: plain's and the feature's CPU per request (medians), and the
    ratio of requests per CPU second."""
    out = []
    for label in ("short", "1 KiB"):
        for name in ("cache", NOTHING_KEPT, "guard"):
            mine = [(a, b) for size, feature, a, b in rows if size == label and feature == name]
            if not mine:
                continue
            plain, alone = median([a for a, _ in mine]), median([b for _, b in mine])
            ratio = median([a / b for a, b in mine])
            added = (alone - plain) * 1e6
            out.append([label, name, f"{plain * 1e6:.0f}", f"{alone * 1e6:.0f}",
                        f"{added:+.0f}", f"{ratio:.2f}", str(len(mine))])  # fmt: skip
    return md_table(
        ["prompt", "feature alone", "plain µs/req", "feature µs/req", "added µs/req",
         "req/CPU-s ratio", "rounds"],
        out,
    )  # fmt: skip
