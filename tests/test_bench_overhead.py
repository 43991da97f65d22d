"""bench/overhead_report.py: medians of rounds, ratios round by round, a target that failed."""

from __future__ import annotations

from bench.overhead_measure import (
    DIRECT,
    EDGE_FAST,
    EDGE_POLL,
    LEAN,
    SGLANG,
    VLLM,
    Measured,
    Round,
)
from bench.overhead_report import report
from bench.wrk import WrkResult

INFO = {"machine": "test machine", "load": "none", "date": "today", "commit": "abc1234"}


def _run(rps: float, p50: float, p99: float = 0.01, connections: int = 32) -> WrkResult:
    return WrkResult(connections, int(rps * 4), 4.0, rps, p50, p50, p50, p99, 0)


def _measured(name: str, rps: list[float], c1_p50: list[float], cpu: float | None) -> Measured:
    return Measured(
        name,
        rounds=[Round(_run(r, 0.005), _run(r, 0.01), cpu, 0.99) for r in rps],
        c1=[_run(1 / p, p, connections=1) for p in c1_p50],
    )


def test_ratios_are_medians_of_round_by_round_ratios() -> None:
    """Edge/relay per round 1.2, 2.0, 1.6: the median is 1.60x, not the ratio of medians."""
    direct = _measured(DIRECT, [40_000] * 3, [0.0001] * 3, None)
    relay = _measured(LEAN, [1000, 1000, 2000], [0.0008] * 3, 0.9)
    edge = _measured(EDGE_FAST, [1200, 2000, 3200], [0.0003] * 3, 0.9)
    edge.rss_rest, edge.rss_peak = 49.0, 50.0
    text = report([direct, relay, edge], INFO, 4, 3)
    assert "- req/s at 32 connections: 1.60x the lean relay" in text
    assert "(edge/relay 1,200/1,000, 2,000/1,000, 3,200/2,000; target ≥ 1.5x): met." in text
    assert "- added p50 at one connection: 0.200 ms (target ≤ 0.25 ms): met." in text
    assert "reciprocal latency at one connection (relay p50 / edge p50): 2.67x" in text
    assert "| 2,000 | 1,200 / 2,000 / 3,200 |" in text  # the median, then the rounds in order


def test_a_target_that_failed_is_a_row_saying_so() -> None:
    """No rounds and an error: its row says why, and the others are still reported."""
    direct = _measured(DIRECT, [40_000] * 2, [0.0001] * 2, None)
    relay = _measured(LEAN, [1000, 1000], [0.0008] * 2, 0.9)
    edge = Measured(EDGE_FAST, error="edge did not start")
    text = report([direct, relay, edge], INFO, 4, 2)
    assert f"| {EDGE_FAST} | failed: edge did not start |" in text
    assert f"- {EDGE_FAST}: not measured in this run (see the table)." in text
    assert "| lean aiohttp+uvloop relay | 1,000 |" in text


def test_the_rust_routers_are_compared_round_by_round() -> None:
    """The edge's req/s as a share of each router's, and what each router adds at c1."""
    direct = _measured(DIRECT, [40_000] * 3, [0.0001] * 3, None)
    edge = _measured(EDGE_FAST, [2000, 2000, 2000], [0.0003] * 3, 0.9)
    vllm = _measured(VLLM, [4000, 2000, 5000], [0.0002] * 3, 0.9)
    sglang = Measured(SGLANG, error="cannot install")
    text = report([direct, edge, vllm, sglang], INFO, 4, 3)
    assert f"- against {VLLM}: the edge does 0.50x its req/s at 32 connections" in text
    assert "it adds 0.100 ms at one connection." in text
    assert f"against {SGLANG}" not in text


def test_the_polling_edge_is_held_to_the_targets_with_what_it_costs() -> None:
    """The busy-polling edge gets its own verdicts, and its CPU at c1 beside the plain edge's."""
    direct = _measured(DIRECT, [40_000] * 2, [0.0001] * 2, None)
    relay = _measured(LEAN, [1000, 1000], [0.0008] * 2, 0.9)
    edge = _measured(EDGE_FAST, [2000, 2000], [0.0004] * 2, 0.9)
    polling = _measured(EDGE_POLL, [2000, 2000], [0.0003] * 2, 0.9)
    edge.c1_cpu, polling.c1_cpu = [0.5, 0.7], [1.0, 0.98]
    text = report([direct, relay, edge, polling], INFO, 4, 2)
    assert f"**{EDGE_POLL}**:" in text
    assert "- added p50 at one connection: 0.200 ms (target ≤ 0.25 ms): met." in text
    assert "CPU at one connection 99% of a core, against 60% without" in text
    assert "| 0.30 (+0.200) | 0.30 / 0.30 |" in text and "| 99% |" in text
