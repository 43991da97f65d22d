"""GetTraffic's arithmetic: per-bucket group sums, summed over a window, with quantiles.

Sums per (time bucket, grouping) are built once per change of the bucket and the sum of a
window's complete buckets once per change of any of them, so a query adds only the current
bucket to a cached total: cheap enough for a dashboard polling every second at 1,000
backends (bench/traffic.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from controlplane.traffic.digest import CellSum, Digest, unpack
from controlplane.traffic.records import Resolution, errors_by_class
from corral import traffic as hist
from corral.v1 import traffic_pb2

# An edge whose latest record ends this long ago no longer counts for in-flight.
INFLIGHT_FRESH_MS = 15_000

Sums = dict[str, CellSum]
# requests, errors, p95 latency of one group in one bucket (sparklines)
Point = tuple[int, int, float]


def group_key(group: int, edge: str, backend: str, model: str, team: str) -> str:
    if group == traffic_pb2.TRAFFIC_GROUP_MODEL:
        return model
    if group == traffic_pb2.TRAFFIC_GROUP_EDGE:
        return edge
    if group == traffic_pb2.TRAFFIC_GROUP_TEAM:
        return team or "-"
    if group == traffic_pb2.TRAFFIC_GROUP_BACKEND_MODEL:
        return f"{backend}/{model}"
    return backend


def sums_of(digests: Iterable[Digest], group: int) -> Sums:
    """One bucket's records summed per group."""
    out: Sums = {}
    for digest in digests:
        apply(out, digest, group, add=True)
    return out


def apply(sums: Sums, digest: Digest, group: int, *, add: bool) -> None:
    """Add a record's cells to (or take them from) a bucket's sums."""
    edge = digest.edge_id
    for cell in digest.cells:
        key = group_key(group, edge, cell[0], cell[1], cell[2])
        into = sums.get(key)
        if into is None:
            into = sums[key] = CellSum()
        if add:
            into.add_cell(cell)
        else:
            into.sub_cell(cell)


def take(sums: Sums, digest: Digest, group: int) -> None:
    """Take a record's cells from sums, dropping groups left with nothing."""
    apply(sums, digest, group, add=False)
    edge = digest.edge_id
    for cell in digest.cells:
        key = group_key(group, edge, cell[0], cell[1], cell[2])
        held = sums.get(key)
        if held is not None and held.empty():
            del sums[key]


def add_into(sums: Sums, part: Sums) -> None:
    """sums += part (sums' own objects: part's are left alone)."""
    for key, cell in part.items():
        into = sums.get(key)
        if into is None:
            into = sums[key] = CellSum()
        into.add(cell)


def take_from(sums: Sums, part: Sums) -> None:
    """sums -= part, dropping groups left with nothing."""
    for key, cell in part.items():
        into = sums.get(key)
        if into is None:
            continue  # never added (part's group was not in sums)
        into.sub(cell)
        if into.empty():
            del sums[key]


def points_of(sums: Sums) -> dict[str, Point]:
    """Each group's sparkline point for one bucket."""
    p95 = hist.quantiles
    return {
        key: (s.requests, s.errors, p95(unpack(s.latency), _P95)[0] if s.latency else 0.0)
        for key, s in sums.items()
    }


def add_all(parts: Iterable[Sums]) -> Sums:
    out: Sums = {}
    for part in parts:
        add_into(out, part)
    return out


def add_two(base: Sums, more: Sums) -> Sums:
    """base + more as a new mapping; groups in only one of them share its (read-only) sum."""
    out = dict(base)
    for key, cell in more.items():
        held = out.get(key)
        out[key] = cell if held is None else CellSum.both(held, cell)
    return out


class Points:
    """Sparkline points of a window: the bucket starts, every group's points over the
    complete buckets, and the current bucket's."""

    __slots__ = ("buckets", "current", "past")

    def __init__(
        self, buckets: list[int], past: dict[str, list[Point]], current: dict[str, Point]
    ) -> None:
        self.buckets = buckets
        self.past = past
        self.current = current


class Row:
    """One group's figures over a window (plain Python: the dashboard reads these directly)."""

    __slots__ = ("cell", "inflight", "key", "past", "point", "quantiles", "series", "share")

    def __init__(self, key: str, cell: CellSum) -> None:
        self.key = key
        self.cell = cell
        self.share = 0.0
        self.inflight = 0
        # latency p50, p95, p99, ttft p50, p95, p99 (one list shared by every answer and row
        # with the same two histograms: read-only)
        self.quantiles: list[float] = []
        self.series: list[Point] = []
        # series = past + [point]: the complete buckets' points (the view's cached list,
        # the same object while those buckets are unchanged) and the current bucket's
        self.past: list[Point] = []
        self.point: Point = NO_POINT


class Result:
    __slots__ = (
        "buckets",
        "decisions",
        "edges",
        "now_unix_ms",
        "requests",
        "rows",
        "span",
        "start_unix_ms",
    )  # fmt: skip

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.requests = 0
        self.span = 1.0
        self.start_unix_ms = 0
        self.now_unix_ms = 0
        self.decisions: dict[str, int] = {}
        self.edges: list[str] = []
        self.buckets: list[int] = []


def compute(
    total: Sums,
    digests: Sequence[Digest],
    points: Points | None,
    group: int,
    start_ms: int,
    now_ms: int,
    resolution: Resolution,
    memo: Memo | None = None,
) -> Result:
    """A window's figures: `total` per group, the window's records (for edges, decisions
    and in-flight), and per-bucket points when a series is asked. `memo` holds quantiles
    by (latency, ttft) histograms from the previous answer; it is replaced by those of
    this one (a group whose histograms did not change costs a lookup, not six quantiles)."""
    out = Result()
    inflight: dict[str, int] = {}
    per_backend = group in (
        traffic_pb2.TRAFFIC_GROUP_UNSPECIFIED,
        traffic_pb2.TRAFFIC_GROUP_BACKEND,
    )
    # In-flight is a level, not a count: each edge's latest record says it (its earlier
    # records, in earlier buckets, said it before), if that record is fresh.
    latest: dict[str, Digest] = {}
    for digest in digests:
        for route, count in digest.decisions.items():
            out.decisions[route] = out.decisions.get(route, 0) + count
        if per_backend:
            held = latest.get(digest.edge_id)
            if held is None or _recency(digest) > _recency(held):
                latest[digest.edge_id] = digest
    for digest in latest.values():
        if now_ms - digest.end_unix_ms < INFLIGHT_FRESH_MS:
            for backend, level in digest.inflight.items():
                inflight[backend] = inflight.get(backend, 0) + level
    first = resolution.bucket(start_ms)
    out.start_unix_ms, out.now_unix_ms = first, now_ms
    # Rates over the time the window has data for: a cluster up for one minute shows its
    # real rate in the 5-minute window, not a fifth of it.
    earliest = min((resolution.bucket(d.start_unix_ms) for d in digests), default=first)
    out.span = max((now_ms - max(first, earliest)) / 1000.0, 1.0)
    out.requests = requests = sum(cell.requests for cell in total.values())
    out.edges = sorted({d.edge_id for d in digests})
    empty_past: list[Point] = []
    if points is not None:
        out.buckets = points.buckets
        empty_past = [NO_POINT] * (len(points.buckets) - 1)
    # The loop below runs once per group (1,000 backends): names bound once.
    three, rows, inflight_of = hist.p50_p95_p99, out.rows, inflight.get
    past_of = points.past.get if points is not None else None
    current_of = points.current.get if points is not None else None
    known: Memo = memo if memo is not None else {}
    used: Memo = {}
    for key in sorted(total, key=lambda k: (-total[k].requests, k)):
        cell = total[key]
        row = Row(key, cell)
        row.share = cell.requests / requests if requests else 0.0
        row.inflight = inflight_of(key, 0)
        histograms = (cell.latency, cell.ttft)
        quantiles = known.get(histograms)
        if quantiles is None:
            latency = three(unpack(cell.latency)) if cell.latency else _NO_QUANTILES
            quantiles = latency + (three(unpack(cell.ttft)) if cell.ttft else _NO_QUANTILES)
        row.quantiles = used[histograms] = quantiles
        if past_of is not None and current_of is not None:
            row.past = past = past_of(key, empty_past)
            row.point = point = current_of(key, NO_POINT)
            row.series = [*past, point]
        rows.append(row)
    if memo is not None:
        memo.clear()
        memo.update(used)
    return out


def _recency(digest: Digest) -> tuple[int, int]:
    """Orders an edge's records: the one ending last (then starting last) is its latest."""
    return digest.end_unix_ms, digest.start_unix_ms


_EMPTY: tuple[int, ...] = (0,) * hist.SIZE
_P95 = (0.95,)
NO_POINT: Point = (0, 0, 0.0)
_NO_QUANTILES = [0.0, 0.0, 0.0]
# quantiles by (latency, ttft) packed histograms
Memo = dict[tuple[int, int], list[float]]


def to_proto(result: Result) -> traffic_pb2.GetTrafficResponse:
    out = traffic_pb2.GetTrafficResponse(
        start_unix_ms=result.start_unix_ms,
        end_unix_ms=result.now_unix_ms,
        requests=result.requests,
        requests_per_second=result.requests / result.span,
        bounds=hist.BOUNDS,
        edges=result.edges,
    )
    out.decisions.update(result.decisions)
    for row in result.rows:
        cell = row.cell
        pb = out.rows.add(key=row.key, requests=cell.requests, share=row.share)
        pb.requests_per_second = cell.requests / result.span
        pb.error_rate = cell.errors / cell.requests if cell.requests else 0.0
        pb.errors.update(errors_by_class(cell.statuses))
        (
            pb.latency_p50_seconds,
            pb.latency_p95_seconds,
            pb.latency_p99_seconds,
            pb.ttft_p50_seconds,
            pb.ttft_p95_seconds,
            pb.ttft_p99_seconds,
        ) = row.quantiles
        pb.latency.extend(unpack(cell.latency) if cell.latency else _EMPTY)
        pb.ttft.extend(unpack(cell.ttft) if cell.ttft else _EMPTY)
        pb.prompt_tokens = cell.prompt_tokens
        pb.completion_tokens = cell.completion_tokens
        pb.cache_hits = cell.cache_hits
        pb.limit_refusals = cell.limit_refusals
        pb.retries = cell.retries
        pb.inflight = row.inflight
        for bucket, (requests_in, errors_in, p95) in zip(result.buckets, row.series, strict=True):
            pb.series.add(
                start_unix_ms=bucket,
                requests=requests_in,
                errors=errors_in,
                p95_latency_seconds=p95,
            )
    return out
