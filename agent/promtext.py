"""Reading the few series the agent needs from a server's Prometheus text page."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from agent.http import ParseError


def read_samples(text: str, names: Iterable[str]) -> dict[str, list[float]]:
    """Values of every sample of each wanted series (one per label set), by series name.

    Only the wanted lines are handed to the parser: a busy server's page holds hundreds of
    series we do not need, and parsing them all would cost the event loop for nothing.
    """
    wanted = set(names)
    kept: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP") and parts[2] in wanted:
                kept.append(line)
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            kept.append(line)
    out: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families("\n".join(kept) + "\n"):
            for sample in family.samples:
                if sample.name in wanted:
                    out.setdefault(sample.name, []).append(float(sample.value))
    except ValueError as exc:
        raise ParseError(f"metrics text: {exc}") from None
    return out


def total(samples: dict[str, list[float]], *names: str) -> float | None:
    """Sum over label sets of the first name present (names: newest spelling first)."""
    for name in names:
        if name in samples:
            return sum(samples[name])
    return None


def highest(samples: dict[str, list[float]], *names: str) -> float | None:
    """Largest value over label sets of the first name present."""
    for name in names:
        if samples.get(name):
            return max(samples[name])
    return None
