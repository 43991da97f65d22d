"""The decoded traffic records held per time bucket, the sums kept over them, and the
queries answered from them (GetTraffic, the dashboard).

Sums per time bucket and per window are kept up to date as records change (a changed
record's old cells taken off, its new ones added), and a window's sums move along with time
a bucket at a time, so a report landing in a complete bucket never makes a query re-add the
whole window. Where the records come from (listing and watching the store) is
controlplane/traffic/view.py.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from controlplane.traffic.digest import Digest
from controlplane.traffic.query import (
    NO_POINT,
    Memo,
    Point,
    Points,
    Result,
    Sums,
    add_all,
    add_into,
    add_two,
    apply,
    compute,
    points_of,
    sums_of,
    take,
    take_from,
    to_proto,
)
from controlplane.traffic.records import COARSE, FINE, Resolution
from corral.v1 import traffic_pb2

WINDOWS: dict[int, tuple[int, Resolution]] = {
    traffic_pb2.TRAFFIC_WINDOW_1M: (60, FINE),
    traffic_pb2.TRAFFIC_WINDOW_5M: (300, FINE),
    traffic_pb2.TRAFFIC_WINDOW_UNSPECIFIED: (300, FINE),
    traffic_pb2.TRAFFIC_WINDOW_1H: (3600, COARSE),
}
# Answers are reused this long (a dashboard polled by many browsers costs one merge).
CACHE_SECONDS = 1.0
Bucket = tuple[str, int]  # (resolution name, bucket start unix ms)
Series = dict[str, list[Point]]  # group -> its points over a window's complete buckets


class _Window:
    """Sums of a window's complete buckets, [first, current) (bucket starts, unix ms)."""

    __slots__ = ("current", "first", "sums")

    def __init__(self, first: int, current: int, sums: Sums) -> None:
        self.first = first
        self.current = current
        self.sums = sums


class TrafficBuckets:
    """Digests per (resolution, bucket start) and per record key, with every sum built
    over them kept current as records are taken in (_take, _take_steps) or dropped (_drop)."""

    def __init__(self) -> None:
        self._buckets: dict[Bucket, dict[bytes, Digest]] = {}
        self._versions: dict[Bucket, int] = {}
        self._changes = 0
        # (bucket, group) -> [bucket version, sums per group, sparkline points or None]
        self._sums: dict[tuple[Bucket, int], list[Any]] = {}
        # (resolution, group, window seconds) -> the sums of the window's complete buckets,
        # kept up to date as records change and moved along as time passes
        self._windows: dict[tuple[str, int, int], _Window] = {}
        self._answers: dict[tuple[int, int, bool], tuple[float, Result]] = {}
        # (window, group) -> quantiles of the last answer by histograms (query.compute)
        self._memos: dict[tuple[int, int], Memo] = {}
        self._series: dict[
            tuple[str, int, int], tuple[tuple[int, ...], dict[str, list[Point]]]
        ] = {}

    def _clear(self) -> None:
        """Hold nothing (a listing replaces every record)."""
        self._buckets.clear()
        self._sums.clear()
        self._windows.clear()

    def _touch(self, bucket: Bucket) -> None:
        self._changes += 1
        self._versions[bucket] = self._changes

    def _take(self, key: bytes, bucket: Bucket, digest: Digest) -> None:
        """Hold a record's new digest, its old one's counts replaced in every sum."""
        for _ in self._take_steps(key, bucket, digest):
            pass

    def _take_steps(
        self, key: bytes, bucket: Bucket, digest: Digest
    ) -> Generator[None, None, None]:
        """_take one sum at a time (1,000 cells in and out of a sum take milliseconds),
        pausing between sums. Until the last step the bucket holds the old digest at its old
        version: a sum built meanwhile is built from it and its version is stale after;
        a window built or moved over the bucket meanwhile is dropped at the end."""
        old = self._buckets.get(bucket, {}).get(key)
        name, start = bucket
        # Sums already built for the bucket follow the change (the current bucket changes
        # at every report: rebuilding it would read every edge's record each time).
        entries = [(group, entry) for (b, group), entry in self._sums.items() if b == bucket]
        windows = [
            (window_key, window, (window.first, window.current))
            for window_key, window in self._windows.items()
            if window_key[0] == name and window.first <= start < window.current
        ]
        for group, entry in entries:
            if old is not None:
                apply(entry[1], old, group, add=False)
            apply(entry[1], digest, group, add=True)
            entry[2] = None
            yield
        for (_, group, _), window, _ in windows:
            if old is not None:
                take(window.sums, old, group)
            apply(window.sums, digest, group, add=True)
            yield
        self._buckets.setdefault(bucket, {})[key] = digest
        self._touch(bucket)
        for _, entry in entries:
            entry[0] = self._versions[bucket]
            entry[2] = None
        kept = {id(window) for _, window, span in windows if span == (window.first, window.current)}
        for window_key in [
            k
            for k, window in self._windows.items()
            if k[0] == name and window.first <= start < window.current and id(window) not in kept
        ]:
            del self._windows[window_key]

    def _follow_windows(self, bucket: Bucket, old: Digest | None, new: Digest | None) -> None:
        """Apply a record's change to the window sums whose complete buckets hold it."""
        name, start = bucket
        for (resolution, group, _), window in self._windows.items():
            if resolution == name and window.first <= start < window.current:
                if old is not None:
                    take(window.sums, old, group)
                if new is not None:
                    apply(window.sums, new, group, add=True)

    def _drop(self, key: bytes, bucket: Bucket) -> None:
        """Let go of the record under key in bucket, its counts taken off every sum."""
        held = self._buckets.get(bucket)
        old = held.pop(key, None) if held is not None else None
        if held is not None and old is not None:
            self._touch(bucket)
            for (cached_bucket, group), entry in self._sums.items():
                if cached_bucket == bucket:
                    apply(entry[1], old, group, add=False)
                    entry[0] = self._versions[bucket]
                    entry[2] = None
            self._follow_windows(bucket, old, None)
            if not held:
                del self._buckets[bucket]
                for group_key in [k for k in self._sums if k[0] == bucket]:
                    del self._sums[group_key]

    # -- reading --------------------------------------------------------------------------

    def digests_of(self, resolution: Resolution, since_ms: int = 0) -> list[Digest]:
        """Every record at a resolution (ending after since_ms)."""
        return [
            digest
            for (name, _), held in self._buckets.items()
            if name == resolution.name
            for digest in held.values()
            if digest.end_unix_ms > since_ms
        ]

    def _bucket_sums(self, bucket: Bucket, group: int) -> Sums:
        version = self._versions.get(bucket, 0)
        cached = self._sums.get((bucket, group))
        if cached is not None and cached[0] == version:
            sums: Sums = cached[1]
            return sums
        sums = sums_of(self._buckets.get(bucket, {}).values(), group)
        self._sums[(bucket, group)] = [version, sums, None]
        return sums

    def _bucket_points(self, bucket: Bucket, group: int) -> dict[str, Point]:
        self._bucket_sums(bucket, group)
        entry = self._sums[(bucket, group)]
        if entry[2] is None:
            entry[2] = points_of(entry[1])
        points: dict[str, Point] = entry[2]
        return points

    def query(
        self, request: traffic_pb2.GetTrafficRequest, now_ms: int | None = None
    ) -> traffic_pb2.GetTrafficResponse:
        """GetTraffic's answer."""
        return to_proto(self.result(request.window, request.group_by, request.series, now_ms))

    def result(self, window_id: int, group: int, series: bool, now_ms: int | None = None) -> Result:
        """A window's figures per group; reused for CACHE_SECONDS (one merge per second
        however many browsers poll), unless a time is given."""
        cache_key = (window_id, group, series)
        mono = time.monotonic()
        if now_ms is None:
            hit = self._answers.get(cache_key)
            if hit is not None and mono - hit[0] < CACHE_SECONDS:
                return hit[1]
        result = self._compute(window_id, group, series, now_ms)
        if now_ms is None:
            self._answers[cache_key] = (mono, result)
        return result

    def _compute(self, window_id: int, group: int, series: bool, now_ms: int | None) -> Result:
        window, resolution = WINDOWS.get(window_id, WINDOWS[0])
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        start = now - window * 1000
        step = resolution.seconds * 1000
        first, current = resolution.bucket(start), resolution.bucket(now)
        starts = range(first, current + 1, step)
        name = resolution.name
        complete = [(name, b) for b in starts if b < current and (name, b) in self._buckets]
        signature = tuple(self._versions.get(b, 0) for b in complete)
        base = self._window_sums(name, group, window, first, current, step)
        now_sums = self._bucket_sums((name, current), group)
        total = add_two(base, now_sums) if now_sums else base
        digests = [
            d
            for b in starts
            for d in self._buckets.get((name, b), {}).values()
            if d.end_unix_ms > first
        ]
        points = None
        if series:
            past = self._past_points(name, group, first, current, step, signature)
            points = Points(list(starts), past, self._bucket_points((name, current), group))
        memo = self._memos.setdefault((window, group), {})
        return compute(total, digests, points, group, start, now, resolution, memo)

    def _window_sums(
        self, name: str, group: int, window: int, first: int, current: int, step: int
    ) -> Sums:
        """The sums of the complete buckets [first, current): the held ones moved along (a
        bucket's sums taken off as it leaves, added as it completes), else built anew."""
        key = (name, group, window)
        held = self._windows.get(key)
        if (
            held is None
            or first < held.first
            or current < held.current
            or first - held.first > window * 1000 // 2
        ):
            complete = [
                (name, b) for b in range(first, current, step) if (name, b) in self._buckets
            ]
            held = self._windows[key] = _Window(
                first, current, add_all(self._bucket_sums(b, group) for b in complete)
            )
            return held.sums
        for start in range(held.first, first, step):
            if (name, start) in self._buckets:
                take_from(held.sums, self._bucket_sums((name, start), group))
        for start in range(held.current, current, step):
            if (name, start) in self._buckets:
                add_into(held.sums, self._bucket_sums((name, start), group))
        held.first, held.current = first, current
        return held.sums

    def _past_points(
        self, name: str, group: int, first: int, current: int, step: int, signature: tuple[int, ...]
    ) -> Series:
        """Each group's sparkline points over the window's complete buckets (cached like the
        window's sums: rebuilt only when one of those buckets changed)."""
        key = (name, group, first)
        cached = self._series.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        per_bucket = [
            self._bucket_points((name, b), group) if (name, b) in self._buckets else {}
            for b in range(first, current, step)
        ]
        groups: set[str] = set()
        for points in per_bucket:
            groups.update(points)
        past = {g: [points.get(g, NO_POINT) for points in per_bucket] for g in groups}
        for old in [k for k in self._series if k[:2] == (name, group)]:
            del self._series[old]
        self._series[key] = (signature, past)
        return past
