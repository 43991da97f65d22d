"""Traffic records decoded once (when watched) into plain Python sums that add cheaply.

A histogram is packed into one integer, 64 bits per bucket, so adding two histograms is
one integer addition instead of 38, and unpacking is one `struct.unpack`: merging thousands
of cells per query stays in the tens of milliseconds. A bucket cannot overflow its field.

A record's cells are kept as tuples of str, int and a tuple of ints (`Cell`), not objects:
the cyclic garbage collector stops tracking such tuples in the young collections they
survive (the inner one first, then the cell: both before the oldest generation), whereas
an object (even with __slots__) or a dict holding one stays tracked for good, and every
tracked object lengthens every full collection. At 1,000 backends and 20 edges the records of one
hour hold millions of cells: as objects they made full collections of over 100 ms that
stalled the dashboard's answers (bench/traffic.py reports the pauses).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from corral import traffic as hist
from corral.v1 import traffic_pb2

_FIELDS = struct.Struct(f"<{hist.SIZE}Q")
_BYTES = _FIELDS.size
_MAX = (1 << 63) - 1


# Packers of n signed 64-bit fields: a count of 2**63 or more (never real) fails them.
_PACKERS = [struct.Struct(f"<{n}q") for n in range(hist.SIZE + 1)]


def pack(counts: Iterable[int]) -> int:
    values = list(counts)
    if len(values) <= hist.SIZE:
        try:
            return int.from_bytes(_PACKERS[len(values)].pack(*values), "little")
        except struct.error:
            pass
    values = [min(c, _MAX) for c in values][: hist.SIZE]
    values += [0] * (hist.SIZE - len(values))
    return int.from_bytes(_FIELDS.pack(*values), "little")


def unpack(packed: int) -> tuple[int, ...]:
    return _FIELDS.unpack(packed.to_bytes(_BYTES, "little"))


# backend, model, team, requests, errors, latency, ttft (packed histograms), prompt and
# completion tokens, cache hits, limit refusals, retries, statuses (status, count, status,
# count, ...): atomics and a tuple of atomics only, so the collector untracks it.
Cell = tuple[str, str, str, int, int, int, int, int, int, int, int, int, tuple[int, ...]]


def cell_of(cell: traffic_pb2.TrafficCell) -> Cell:
    """A stored cell, decoded."""
    statuses = cell.statuses
    return (
        cell.backend,
        cell.model,
        cell.team,
        cell.requests,
        sum(n for s, n in statuses.items() if is_error(s)),
        pack(cell.latency[:]),  # a slice of a repeated field: one C copy
        pack(cell.ttft[:]),
        cell.prompt_tokens,
        cell.completion_tokens,
        cell.cache_hits,
        cell.limit_refusals,
        cell.retries,
        tuple(x for item in sorted(statuses.items()) for x in item),
    )


def is_error(status: int) -> bool:
    """Errors the operator should see: the backend or the cluster failed the client."""
    return status == 429 or status >= 500


class CellSum:
    """Counts of one group (any merge of cells)."""

    __slots__ = (
        "cache_hits",
        "completion_tokens",
        "errors",
        "latency",
        "limit_refusals",
        "prompt_tokens",
        "requests",
        "retries",
        "statuses",
        "ttft",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.latency = 0
        self.ttft = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_hits = 0
        self.limit_refusals = 0
        self.retries = 0

    @classmethod
    def of(cls, cell: Cell) -> CellSum:
        out = cls()
        out.add_cell(cell)
        return out

    @classmethod
    def both(cls, one: CellSum, two: CellSum) -> CellSum:
        """A new sum of one and two (one construction instead of an empty sum and two adds)."""
        out = cls.__new__(cls)
        out.requests = one.requests + two.requests
        out.errors = one.errors + two.errors
        statuses = out.statuses = dict(one.statuses)
        for status, count in two.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
        out.latency = one.latency + two.latency
        out.ttft = one.ttft + two.ttft
        out.prompt_tokens = one.prompt_tokens + two.prompt_tokens
        out.completion_tokens = one.completion_tokens + two.completion_tokens
        out.cache_hits = one.cache_hits + two.cache_hits
        out.limit_refusals = one.limit_refusals + two.limit_refusals
        out.retries = one.retries + two.retries
        return out

    def add(self, other: CellSum) -> None:
        self.requests += other.requests
        self.errors += other.errors
        if other.statuses:
            mine = self.statuses
            for status, count in other.statuses.items():
                mine[status] = mine.get(status, 0) + count
        self.latency += other.latency
        self.ttft += other.ttft
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cache_hits += other.cache_hits
        self.limit_refusals += other.limit_refusals
        self.retries += other.retries

    def sub(self, other: CellSum) -> None:
        """Take back what add(other) added."""
        self.requests -= other.requests
        self.errors -= other.errors
        if other.statuses:
            mine = self.statuses
            for status, count in other.statuses.items():
                left = mine.get(status, 0) - count
                if left:
                    mine[status] = left
                else:
                    mine.pop(status, None)
        self.latency -= other.latency
        self.ttft -= other.ttft
        self.prompt_tokens -= other.prompt_tokens
        self.completion_tokens -= other.completion_tokens
        self.cache_hits -= other.cache_hits
        self.limit_refusals -= other.limit_refusals
        self.retries -= other.retries

    def empty(self) -> bool:
        """Nothing counted (all taken back)."""
        return not (
            self.requests or self.statuses or self.latency or self.ttft or self.prompt_tokens
            or self.completion_tokens or self.cache_hits or self.limit_refusals or self.retries
            or self.errors
        )  # fmt: skip

    def add_cell(self, cell: Cell) -> None:
        """Add a record's cell."""
        (_, _, _, requests, errors, latency, ttft, prompt, completion, hits, refusals, retries,
         statuses) = cell  # fmt: skip
        self.requests += requests
        self.errors += errors
        if statuses:
            mine = self.statuses
            for i in range(0, len(statuses), 2):
                status = statuses[i]
                mine[status] = mine.get(status, 0) + statuses[i + 1]
        self.latency += latency
        self.ttft += ttft
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cache_hits += hits
        self.limit_refusals += refusals
        self.retries += retries

    def sub_cell(self, cell: Cell) -> None:
        """Take back what add_cell(cell) added (a record replaced by a newer version)."""
        (_, _, _, requests, errors, latency, ttft, prompt, completion, hits, refusals, retries,
         statuses) = cell  # fmt: skip
        self.requests -= requests
        self.errors -= errors
        if statuses:
            mine = self.statuses
            for i in range(0, len(statuses), 2):
                status = statuses[i]
                left = mine.get(status, 0) - statuses[i + 1]
                if left:
                    mine[status] = left
                else:
                    mine.pop(status, None)
        self.latency -= latency
        self.ttft -= ttft
        self.prompt_tokens -= prompt
        self.completion_tokens -= completion
        self.cache_hits -= hits
        self.limit_refusals -= refusals
        self.retries -= retries


@dataclass(slots=True)
class Digest:
    """One stored record (one edge, one time bucket), decoded."""

    edge_id: str
    start_unix_ms: int
    end_unix_ms: int
    updated_unix_ms: int
    cells: list[Cell]
    decisions: dict[str, int]
    inflight: dict[str, int]
    snapshot_version: int = 0
    snapshot_created_unix_ms: int = 0
    ejected: list[str] = field(default_factory=list)
    listen_address: str = ""
    # (backend, model, status, count) of the error answers in it, for the timeline.
    errors: list[tuple[str, str, int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, record: traffic_pb2.TrafficRecord, cells: list[Cell] | None = None) -> Digest:
        """The record decoded (its cells given when already decoded, a slice at a time)."""
        if cells is None:
            cells = [cell_of(cell) for cell in record.cells]
        errors: list[tuple[str, str, int, int]] = []
        for cell in cells:
            if cell[4]:
                statuses = cell[12]
                errors.extend(
                    (cell[0], cell[1], statuses[i], statuses[i + 1])
                    for i in range(0, len(statuses), 2)
                    if is_error(statuses[i])
                )
        return cls(
            edge_id=record.edge_id,
            start_unix_ms=record.start_unix_ms,
            end_unix_ms=record.end_unix_ms,
            updated_unix_ms=record.updated_unix_ms,
            cells=cells,
            decisions=dict(record.decisions),
            inflight=dict(record.inflight),
            snapshot_version=record.snapshot_version,
            snapshot_created_unix_ms=record.snapshot_created_unix_ms,
            ejected=list(record.ejected),
            listen_address=record.listen_address,
            errors=errors,
        )
