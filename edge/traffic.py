"""The edge's traffic summary: per (backend, model) cells cut into slices of a few seconds.

The hot path (`finished`, once per request from Proxy.run, reading the request's Call) adds
to a cell keyed (backend, model, team): one dict lookup, one or two bisects and a few
additions. Routing decisions and retries are not counted again: a slice takes the
difference of the Prometheus counters EdgeMetrics already keeps. Slices wait in a
bounded queue until the control plane acknowledges them, so an edge that cannot reach it
keeps serving and catches up later; past the bound the oldest are dropped (and counted).
A slice holds no more than the control plane takes (controlplane/traffic/intake.py): at
most MAX_CELLS cells, retry cells and "other" included, and it never ends before it starts.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping

from corral import traffic as hist
from corral.v1 import traffic_pb2
from edge.gateway.call import Call

# The most cells one slice holds, "other" and the retry cells included (the control plane
# refuses a slice of more: controlplane/traffic/intake.py); the rest merge into "other".
MAX_CELLS = 1000
OTHER = "other"
_OTHER_KEY = (OTHER, OTHER, OTHER)
# Slices kept while the control plane cannot be reached (1 h at 5 s).
MAX_PENDING = 720

# Quiet slices not sent between two that are (a heartbeat with the edge's state).
QUIET_SLICES_SKIPPED = 1

_BOUNDS = hist.BOUNDS
# Limit outcomes (Call.limit) that let the request through; any other names the refusal.
_NOT_REFUSED = frozenset(("allowed", "soft_budget"))

# (snapshot version, snapshot created unix ms, ejected backends)
EdgeState = tuple[int, int, list[str]]


class Cell:
    __slots__ = (
        "cache_hits",
        "completion_tokens",
        "latency",
        "latency_sum",
        "limit_refusals",
        "prompt_tokens",
        "requests",
        "statuses",
        "ttft",
        "ttft_sum",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.latency = hist.empty()
        self.latency_sum = 0.0
        self.ttft = hist.empty()
        self.ttft_sum = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_hits = 0
        self.limit_refusals = 0


CellKey = tuple[str, str, str]


class TrafficRecorder:
    """Counts into the current slice; `cut` closes it and queues it for reporting."""

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self.cells: dict[CellKey, Cell] = {}
        self.pending: deque[traffic_pb2.TrafficSlice] = deque()
        self.max_pending = max_pending
        # Off when the edge reports to no control plane: nothing is counted.
        self.enabled = True
        self.dropped = 0
        self._seq = 0
        self._start_ms = int(time.time() * 1000)
        self._last_decisions: dict[str, int] = {}
        self._last_retries: dict[str, float] = {}
        self._quiet = 0

    def cell(self, backend: str, model: str, team: str) -> Cell:
        key = (backend, model, team)
        cell = self.cells.get(key)
        if cell is None:
            if len(self.cells) >= MAX_CELLS:  # bounds memory; `cut` keeps the slice's cap
                key = _OTHER_KEY
                cell = self.cells.get(key)
                if cell is not None:
                    return cell
            cell = self.cells[key] = Cell()
        return cell

    # -- the hot path: once per request --------------------------------------------------

    def finished(self, call: Call, model: str, backend: str, status: int, seconds: float) -> None:
        """Count a finished request (model and backend as the metrics label them)."""
        if not self.enabled:
            return
        cell = self.cells.get((backend, model, call.team))
        if cell is None:
            cell = self.cell(backend, model, call.team)
        cell.requests += 1
        statuses = cell.statuses
        statuses[status] = statuses.get(status, 0) + 1
        cell.latency[bisect_left(_BOUNDS, seconds)] += 1
        cell.latency_sum += seconds
        ttft = call.ttft
        if ttft is not None:
            cell.ttft[bisect_left(_BOUNDS, ttft)] += 1
            cell.ttft_sum += ttft
        if call.prompt_tokens or call.completion_tokens:
            cell.prompt_tokens += call.prompt_tokens
            cell.completion_tokens += call.completion_tokens
        if call.cache == "hit":
            cell.cache_hits += 1
        if call.limit and call.limit not in _NOT_REFUSED:
            cell.limit_refusals += 1

    # -- once per slice ------------------------------------------------------------------

    def cut(
        self,
        decisions: Mapping[str, int],
        retries: Iterable[tuple[str, float]],
        inflight: Mapping[str, int],
        now_ms: int | None = None,
        edge_state: EdgeState | None = None,
    ) -> traffic_pb2.TrafficSlice | None:
        """Close the current slice (given the cumulative counters decisions[route] and
        retries (backend, total) the metrics keep) and queue it; None when nothing happened
        in it."""
        cells, self.cells = self.cells, {}
        end_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        # The wall clock stepped back (NTP) since the last cut: the slice starts where it
        # ends, on the clock now in force (the control plane refuses end < start).
        start_ms, self._start_ms = min(self._start_ms, end_ms), end_ms
        decision_delta: dict[str, int] = {}
        for route, total in list(decisions.items()):
            delta = total - self._last_decisions.get(route, 0)
            if delta:
                self._last_decisions[route] = total
                decision_delta[route] = delta
        retry_delta: dict[str, int] = {}
        totals: dict[str, float] = {}
        for backend, value in retries:
            totals[backend] = totals.get(backend, 0.0) + value
        for backend, so_far in totals.items():
            grown = int(so_far - self._last_retries.get(backend, 0.0))
            if grown:
                self._last_retries[backend] = so_far
                retry_delta[backend] = grown
        live = {b: n for b, n in inflight.items() if n > 0}
        # A quiet slice is still sent now and then: it tells the control plane this edge's
        # snapshot version and ejections.
        quiet = not cells and not decision_delta and not retry_delta and not live
        if quiet and self._quiet < QUIET_SLICES_SKIPPED:
            self._quiet += 1
            return None
        self._quiet = 0
        other_retries = 0
        if len(cells) + len(retry_delta) > MAX_CELLS:
            other_retries = _fold(cells, retry_delta)
        out = traffic_pb2.TrafficSlice(start_unix_ms=start_ms, end_unix_ms=end_ms)
        for (backend, model, team), cell in sorted(cells.items()):
            pb = out.cells.add(backend=backend, model=model, team=team, requests=cell.requests)
            for status, count in cell.statuses.items():
                pb.statuses[status] = count
            if cell.requests:
                pb.latency.extend(_trim(cell.latency))
                pb.latency_sum = cell.latency_sum
            if cell.ttft_sum or any(cell.ttft):
                pb.ttft.extend(_trim(cell.ttft))
                pb.ttft_sum = cell.ttft_sum
            pb.prompt_tokens = cell.prompt_tokens
            pb.completion_tokens = cell.completion_tokens
            pb.cache_hits = cell.cache_hits
            pb.limit_refusals = cell.limit_refusals
            if other_retries and (backend, model, team) == _OTHER_KEY:
                pb.retries = other_retries
        for backend, count in sorted(retry_delta.items()):
            # Retries are counted per backend only (the model is not known there).
            out.cells.add(backend=backend, model="-", retries=count)
        out.decisions.update(decision_delta)
        out.inflight.update(live)
        if edge_state is not None:
            out.snapshot_version, out.snapshot_created_unix_ms, ejected = edge_state
            out.ejected.extend(ejected)
        self._seq += 1
        out.seq = self._seq
        self.pending.append(out)
        while len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.dropped += 1
        return out

    def acknowledge(self, seq: int) -> None:
        """The control plane holds every slice up to seq: forget them."""
        while self.pending and self.pending[0].seq <= seq:
            self.pending.popleft()

    def refused(self, seq: int) -> int:
        """The control plane refused every slice up to seq for good: drop them (counted
        as dropped); return how many."""
        count = 0
        while self.pending and self.pending[0].seq <= seq:
            self.pending.popleft()
            count += 1
        self.dropped += count
        return count


def _fold(cells: dict[CellKey, Cell], retries: dict[str, int]) -> int:
    """Bring a slice's cells and per-backend retry cells within MAX_CELLS: the busiest
    (by requests, by retries) keep their names, the rest merge into the "other" cell.
    Changes both in place; returns the retries merged into "other"."""
    other = cells.pop(_OTHER_KEY, None)
    ranked: list[tuple[int, bool, CellKey]] = [
        (cell.requests, False, key) for key, cell in cells.items()
    ]
    ranked.extend((count, True, (backend, "", "")) for backend, count in retries.items())
    ranked.sort(key=lambda item: (-item[0], item[1], item[2]))
    if other is None:
        other = Cell()
    other_retries = 0
    for _, is_retry, key in ranked[MAX_CELLS - 1 :]:  # one place is left for "other"
        if is_retry:
            other_retries += retries.pop(key[0])
        else:
            _merge(other, cells.pop(key))
    cells[_OTHER_KEY] = other
    return other_retries


def _merge(into: Cell, cell: Cell) -> None:
    into.requests += cell.requests
    statuses = into.statuses
    for status, count in cell.statuses.items():
        statuses[status] = statuses.get(status, 0) + count
    hist.add_into(into.latency, cell.latency)
    into.latency_sum += cell.latency_sum
    hist.add_into(into.ttft, cell.ttft)
    into.ttft_sum += cell.ttft_sum
    into.prompt_tokens += cell.prompt_tokens
    into.completion_tokens += cell.completion_tokens
    into.cache_hits += cell.cache_hits
    into.limit_refusals += cell.limit_refusals


def _trim(counts: list[int]) -> list[int]:
    """Counts without trailing empty buckets (they merge as zeros)."""
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    return counts[:end]
