"""What a run of bench/routing.py measured per policy (RunStats: TTFT, cache hits against
the ideal, balance, conversations kept on one backend) and how its section of
docs/BENCHMARKS.md shows it: table rows, means over workload seeds, verdicts, the workload.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bench.kvcache import REPLY_TOKENS, CostModel, Workload


@dataclass
class RunStats:
    policy: str
    edges: int
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ideal_cached_tokens: int = 0
    per_backend: Counter[str] = field(default_factory=Counter)
    conv_backends: dict[int, set[str]] = field(default_factory=dict)
    failed: int = 0
    wall_seconds: float = 0.0

    def record(
        self, cid: int, backend: str, ttft: float, prompt: int, cached: int, ideal: int
    ) -> None:
        self.ttft.append(ttft)
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.ideal_cached_tokens += ideal
        self.per_backend[backend] += 1
        self.conv_backends.setdefault(cid, set()).add(backend)

    @property
    def requests(self) -> int:
        return len(self.ttft)

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def ideal_hit_rate(self) -> float:
        return self.ideal_cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def imbalance(self, backends: int) -> float:
        if not self.per_backend:
            return 0.0
        counts = [self.per_backend.get(f"kv{i}", 0) for i in range(backends)]
        return max(counts) / (sum(counts) / backends)

    @property
    def single_backend_share(self) -> float:
        """Conversations whose every turn went to one backend."""
        if not self.conv_backends:
            return 0.0
        return sum(1 for s in self.conv_backends.values() if len(s) == 1) / len(self.conv_backends)


def row_of(s: RunStats, backends: int = 3) -> list[str]:
    from bench.common import percentile

    if not s.ttft:
        return [s.policy, str(s.edges), "no requests", "", "", "", "", "", ""]
    mean = sum(s.ttft) / len(s.ttft)
    p99 = percentile(s.ttft, 99)
    of_ideal = s.hit_rate / s.ideal_hit_rate if s.ideal_hit_rate else 0.0
    return [
        s.policy,
        str(s.edges),
        f"{mean * 1000:.0f}",
        f"{p99 * 1000:.0f}",
        f"{s.hit_rate * 100:.1f}% ({of_ideal * 100:.0f}% of {s.ideal_hit_rate * 100:.1f}%)",
        f"{s.imbalance(backends):.2f}",
        f"{s.single_backend_share * 100:.0f}%",
        str(s.requests),
        str(s.failed),
    ]


def aggregate(policy: str, runs: list[RunStats]) -> list[str]:
    from bench.common import percentile

    n = len(runs)
    ttft = sum(sum(r.ttft) / len(r.ttft) for r in runs) / n
    p99 = sum(percentile(r.ttft, 99) for r in runs) / n
    of_ideal = sum(r.hit_rate / r.ideal_hit_rate for r in runs if r.ideal_hit_rate) / n
    imb = [r.imbalance(3) for r in runs]
    one = sum(r.single_backend_share for r in runs) / n
    return [
        policy,
        f"{ttft * 1000:.0f}",
        f"{p99 * 1000:.0f}",
        f"{of_ideal * 100:.0f}%",
        f"{sum(imb) / n:.2f} / {max(imb):.2f}",
        f"{one * 100:.0f}%",
    ]


HEADERS = [
    "policy", "edges", "TTFT mean ms", "TTFT p99 ms", "cache hit rate (of ideal)",
    "imbalance max/mean", "conversations on one backend", "requests", "failed",
]  # fmt: skip


def verdicts(runs: list[RunStats]) -> list[str]:
    lines = []
    bounded = {s.edges: s for s in runs if s.policy == "sticky-bounded" and s.ttft}
    for edges, s in sorted(bounded.items()):
        of_ideal = s.hit_rate / s.ideal_hit_rate if s.ideal_hit_rate else 0.0
        ok = of_ideal >= 0.9 and s.imbalance(3) <= 1.3
        lines.append(
            f"sticky-bounded, {edges} edge(s): {of_ideal * 100:.0f}% of the ideal hit rate "
            f"(target ≥ 90%), imbalance {s.imbalance(3):.2f} (target ≤ 1.3): "
            f"{'met' if ok else 'NOT met'}."
        )
    if 1 in bounded and 3 in bounded:
        a, b = bounded[1], bounded[3]
        lines.append(
            f"1 vs 3 edges: hit rate {a.hit_rate * 100:.1f}% vs {b.hit_rate * 100:.1f}%, "
            f"imbalance {a.imbalance(3):.2f} vs {b.imbalance(3):.2f}, conversations kept on "
            f"one backend {a.single_backend_share * 100:.0f}% vs "
            f"{b.single_backend_share * 100:.0f}%."
        )
    return lines


def describe(w: Workload, cost: CostModel) -> str:
    return (
        f"Workload: {w.conversations} conversations x {w.turns} turns, {w.groups} groups each "
        f"sharing a {w.system_tokens}-token system prompt, a {w.first_user_tokens}-token first "
        f"user message, {w.user_tokens}-token later turns, {REPLY_TOKENS}-token answers, "
        f"think time ~{w.think_ms:g} ms; cache {cost.capacity_blocks} blocks per backend "
        f"(45% of the {w.working_set_blocks()}-block working set)."
    )
