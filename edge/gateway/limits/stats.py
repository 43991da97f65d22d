"""The limiter's metrics: admitted and refused requests by key, team and reason; lease round
trips; store errors; soft-limit warnings. Plain numbers per request, samples when scraped."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from edge.exposition import Family, Registry

if TYPE_CHECKING:
    from edge.gateway.limits.ticket import Subject

log = logging.getLogger(__name__)


def labels(subjects: Sequence[Subject]) -> tuple[str, str]:
    key = team = "-"
    for subject in subjects:
        if subject.kind == "key":
            key = subject.name
        elif subject.kind == "team":
            team = subject.name
        elif subject.kind == "ip" and key == "-":
            key = "ip"  # client addresses are unbounded: one label for all of them
    return key, team


class LimitStats:
    def __init__(self) -> None:
        # (key, team, outcome) -> requests, in a one-item list: a Plan holds its "admitted"
        # cell and adds to it with no hashing per request.
        self.decisions: dict[tuple[str, str, str], list[int]] = {}
        self.round_trips = 0
        self.store_errors = 0
        self.warnings: dict[tuple[str, str], int] = {}
        self._warned: set[str] = set()

    def cell(self, label: tuple[str, str, str]) -> list[int]:
        """The counter of one (key, team, outcome), made at first use."""
        found = self.decisions.get(label)
        if found is None:
            found = self.decisions[label] = [0]
        return found

    def refused(self, subjects: Sequence[Subject], reason: str) -> None:
        self.cell((*labels(subjects), reason))[0] += 1

    def round_trip(self) -> None:
        self.round_trips += 1

    def store_error(self) -> None:
        self.store_errors += 1

    def warn(self, subject: Subject, counter: str) -> None:
        """Past a soft threshold: counted every time, logged once per budget period."""
        label = (subject.kind, subject.name)
        self.warnings[label] = self.warnings.get(label, 0) + 1
        if counter not in self._warned:
            self._warned.add(counter)
            log.warning("%s %s is past the soft threshold of its budget", *label)

    def count(self, outcome: str) -> int:
        """Decisions with this outcome (admitted, or a reason), over every key and team."""
        return sum(v[0] for (_, _, o), v in self.decisions.items() if o == outcome)

    def collect(self) -> Iterable[Family]:
        decisions = Family(
            "corral_edge_limit_decisions",
            "Requests admitted or refused by the limiter, by key, team and outcome "
            "(admitted, rpm, tpm, parallel, budget, store).",
            "counter",
            ["key", "team", "outcome"],
        )
        trips = Family(
            "corral_edge_limit_store_round_trips", "Lease calls to the counter store.", "counter"
        )
        errors = Family(
            "corral_edge_limit_store_errors", "Lease calls the counter store failed.", "counter"
        )
        warnings = Family(
            "corral_edge_limit_soft_warnings",
            "Requests settled past a budget's soft threshold, by subject.",
            "counter",
            ["kind", "name"],
        )
        for (key, team, outcome), cell in list(self.decisions.items()):
            decisions.add([key, team, outcome], float(cell[0]))
        trips.add([], float(self.round_trips))
        errors.add([], float(self.store_errors))
        for (kind, name), value in list(self.warnings.items()):
            warnings.add([kind, name], float(value))
        return [decisions, trips, errors, warnings]

    def register(self, registry: Registry) -> None:
        registry.register(self)
