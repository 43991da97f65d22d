"""Pure functions over traffic records: which bucket a slice belongs to, merging, grouping.

Two resolutions are kept: FINE buckets of 10 s (for the 1 m and 5 m windows and sparklines)
and COARSE buckets of 60 s (for the 1 h window). An edge's slice is merged into one bucket
of each, keyed by (edge, bucket start), so one record per edge and bucket exists in the
store however many replicas the edge reported through.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, MutableSequence
from dataclasses import dataclass

from corral.v1 import traffic_pb2


@dataclass(frozen=True)
class Resolution:
    name: str
    seconds: int
    # How long a record stays in the store after its last write.
    ttl_seconds: int

    def bucket(self, unix_ms: int) -> int:
        """Start (unix ms) of the bucket a time falls in."""
        size = self.seconds * 1000
        return unix_ms - unix_ms % size


FINE = Resolution("fine", 10, 6 * 60 + 30)
COARSE = Resolution("coarse", 60, 61 * 60 + 30)
RESOLUTIONS = (FINE, COARSE)

CellKey = tuple[str, str, str]


def merge_cell(into: traffic_pb2.TrafficCell, cell: traffic_pb2.TrafficCell) -> None:
    """Add cell's counts to into (same key assumed)."""
    into.requests += cell.requests
    for status, count in cell.statuses.items():
        into.statuses[status] += count
    _add_repeated(into.latency, cell.latency)
    into.latency_sum += cell.latency_sum
    _add_repeated(into.ttft, cell.ttft)
    into.ttft_sum += cell.ttft_sum
    into.prompt_tokens += cell.prompt_tokens
    into.completion_tokens += cell.completion_tokens
    into.cache_hits += cell.cache_hits
    into.limit_refusals += cell.limit_refusals
    into.retries += cell.retries


def _add_repeated(into: MutableSequence[int], values: Iterable[int]) -> None:
    """Add bucket counts into a protobuf repeated field, growing it as needed."""
    size = len(into)
    for i, value in enumerate(values):
        if i < size:
            into[i] += value
        else:
            into.append(value)


# Cells merged between two pauses of merge_steps (a few milliseconds' work).
CELLS_PER_STEP = 100


def merge_steps(
    record: traffic_pb2.TrafficRecord,
    incarnation: str,
    piece: traffic_pb2.TrafficSlice,
) -> Generator[None, None, bool]:
    """Merge one slice into a bucket's record, pausing every CELLS_PER_STEP cells (a
    writer on an event loop yields there: 1,000 cells take tens of ms); returns False
    when the record already held the slice."""
    if record.incarnation == incarnation and piece.seq <= record.seq:
        return False
    record.incarnation = incarnation
    record.seq = piece.seq
    if not record.start_unix_ms or piece.start_unix_ms < record.start_unix_ms:
        record.start_unix_ms = piece.start_unix_ms
    record.end_unix_ms = max(record.end_unix_ms, piece.end_unix_ms)
    cells = {(c.backend, c.model, c.team): c for c in record.cells}
    for index, cell in enumerate(piece.cells):
        if index and index % CELLS_PER_STEP == 0:
            yield
        key = (cell.backend, cell.model, cell.team)
        into = cells.get(key)
        if into is None:
            into = cells[key] = record.cells.add(
                backend=cell.backend, model=cell.model, team=cell.team
            )
        merge_cell(into, cell)
    for route, count in piece.decisions.items():
        record.decisions[route] += count
    # Levels, not counts: the latest slice's values stand.
    record.ClearField("inflight")
    record.inflight.update(piece.inflight)
    record.snapshot_version = piece.snapshot_version
    record.snapshot_created_unix_ms = piece.snapshot_created_unix_ms
    del record.ejected[:]
    record.ejected.extend(piece.ejected)
    return True


def errors_by_class(statuses: dict[int, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status, count in statuses.items():
        if status == 429:
            name = "429"
        elif status == 499:
            name = "client_gone"
        elif status >= 500:
            name = "5xx"
        elif status >= 400:
            name = "4xx"
        else:
            continue
        out[name] = out.get(name, 0) + count
    return out
