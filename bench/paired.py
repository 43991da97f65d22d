"""Paired A/B runs: targets warmed up and loaded in turn, round by round, and the table and
medians that compare them."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench import wrk
from bench.common import LOAD_CPU, BenchError, md_table
from bench.procs import Proc

# Per round, per target: (requests per second, the target's CPU seconds per request).
Pair = dict[str, tuple[float, float]]


Targets = dict[str, tuple[Proc, str, Path]]  # name: (process, URL, wrk POST script)


def paired_rounds(
    targets: Targets, *, seconds: float, rounds: int
) -> tuple[list[Pair], dict[str, list[float]]]:
    """Every target warmed up, then loaded in turn: rounds at 32 connections, then rounds at
    one connection (the p50s), so load that comes and goes on the machine hits all alike."""
    warm_up(targets)
    pairs = load_rounds(targets, seconds=seconds, rounds=rounds)
    return pairs, p50_rounds(targets, rounds=rounds)


def warm_up(targets: Targets) -> None:
    """2 s at 32 connections each; an error fails the run."""
    for _, url, script in targets.values():
        warm = wrk.run(url, script, connections=32, seconds=2, cpus=LOAD_CPU)
        if warm.errors:
            raise BenchError(f"{url}: {warm.errors} errors in the warm-up")


def load_rounds(targets: Targets, *, seconds: float, rounds: int) -> list[Pair]:
    """Per round, each target in turn at 32 connections: its req/s and CPU per request."""
    pairs: list[Pair] = []
    for _ in range(rounds):
        one: Pair = {}
        for name, (proc, url, script) in targets.items():
            cpu0 = proc.cpu_seconds()
            result = wrk.run(url, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
            if result.errors:
                raise BenchError(f"{name}: {result.errors} errors")
            one[name] = (result.rps, (proc.cpu_seconds() - cpu0) / result.requests)
        pairs.append(one)
        print("  round: " + ", ".join(f"{n} {v[0]:,.0f} req/s" for n, v in one.items()), flush=True)
    return pairs


def p50_rounds(targets: Targets, *, rounds: int) -> dict[str, list[float]]:
    """Per round, each target in turn at one connection for 3 s: its p50 latency."""
    latency: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (_, url, script) in targets.items():
            latency[name].append(wrk.run(url, script, connections=1, seconds=3, cpus=LOAD_CPU).p50)
    return latency


def paired_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """`./dev bench NAME [--seconds 5] [--rounds 3] [--no-write]` for a paired A/B run."""
    parser = argparse.ArgumentParser(prog=f"./dev bench {name}", description=doc)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return parser


def paired_table(pairs: Sequence[Pair], base: str, other: str) -> str:
    """A Markdown table, one row per round: both req/s, their ratio, both CPU µs/req and
    what `other` adds."""
    rows = []
    for i, pair in enumerate(pairs, 1):
        (a_rps, a_cpu), (b_rps, b_cpu) = pair[base], pair[other]
        rows.append([
            str(i), f"{a_rps:,.0f}", f"{b_rps:,.0f}", f"{b_rps / a_rps * 100:.1f}%",
            f"{a_cpu * 1e6:.0f}", f"{b_cpu * 1e6:.0f}", f"{(b_cpu - a_cpu) * 1e6:+.1f}",
        ])  # fmt: skip
    headers = [
        "round", f"{base} req/s c32", f"{other} req/s c32", f"{other} / {base}",
        f"{base} CPU µs/req", f"{other} CPU µs/req", "added µs/req",
    ]  # fmt: skip
    return md_table(headers, rows)


def paired_medians(pairs: Sequence[Pair], base: str, other: str) -> tuple[float, float]:
    """(median throughput ratio other/base, median CPU µs per request other adds)."""
    ratio = statistics.median(p[other][0] / p[base][0] for p in pairs)
    cpu_added = statistics.median((p[other][1] - p[base][1]) * 1e6 for p in pairs)
    return ratio, cpu_added
