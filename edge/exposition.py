"""The edge's metrics page: counters, gauges and histograms in the Prometheus text format,
written line for line as prometheus_client 0.26 writes them (tests/edge/test_exposition.py
compares the two).

The edge does not import prometheus_client: with its exposition code it loads ~25 modules
(http.server, wsgiref, urllib.request, ...) that cost every edge process ~1 MiB resident,
for a page that is a few lines of text. The control plane and the agent keep using it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Protocol

CONTENT_TYPE: Final = "text/plain; version=1.0.0; charset=utf-8"
# Samples prometheus_client writes after a family's own, each under a gauge heading.
_CREATED: Final = "_created"


def go_float(value: float) -> str:
    """A sample value as Go (and prometheus_client) writes it: +Inf, 1e+06, 0.25."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _line(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels))
    return f"{name}{{{pairs}}} {go_float(value)}\n" if pairs else f"{name} {go_float(value)}\n"


class Family:
    """One metric's samples for one scrape: kind is counter, gauge or histogram."""

    __slots__ = ("created", "doc", "kind", "labelnames", "name", "samples")

    def __init__(self, name: str, doc: str, kind: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.kind = kind
        self.labelnames = tuple(labelnames)
        self.samples: list[tuple[str, list[tuple[str, str]], float]] = []
        self.created: list[tuple[list[tuple[str, str]], float]] = []

    def add(self, values: Sequence[str], value: float, created: float | None = None) -> None:
        """A counter's or gauge's value for one label set (`values` in labelnames' order)."""
        labels = list(zip(self.labelnames, values, strict=True))
        suffix = "_total" if self.kind == "counter" else ""
        self.samples.append((suffix, labels, value))
        if created is not None:
            self.created.append((labels, created))

    def add_histogram(
        self,
        values: Sequence[str],
        buckets: Sequence[tuple[str, float]],
        total: float,
        created: float | None = None,
    ) -> None:
        """Cumulative (le, count) buckets ending with +Inf, and the sum of what was observed."""
        labels = list(zip(self.labelnames, values, strict=True))
        for le, count in buckets:
            self.samples.append(("_bucket", [*labels, ("le", le)], count))
        self.samples.append(("_count", labels, buckets[-1][1]))
        self.samples.append(("_sum", labels, total))
        if created is not None:
            self.created.append((labels, created))

    def render(self) -> str:
        name = self.name + "_total" if self.kind == "counter" else self.name
        doc = self.doc.replace("\\", r"\\").replace("\n", r"\n")
        out = [f"# HELP {name} {doc}\n# TYPE {name} {self.kind}\n"]
        out += [_line(self.name + suffix, labels, v) for suffix, labels, v in self.samples]
        if self.created:
            created = self.name + _CREATED
            out.append(f"# HELP {created} {doc}\n# TYPE {created} gauge\n")
            out += [_line(created, labels, at) for labels, at in self.created]
        return "".join(out)


class Collector(Protocol):
    def collect(self) -> Iterable[Family]: ...


class Registry:
    """The collectors of one metrics page."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._names: set[str] = set()

    def register(self, collector: Collector) -> None:
        """Add a collector; ValueError if one of its metrics is on the page already."""
        names = {family.name for family in collector.collect()}
        if taken := names & self._names:
            raise ValueError(f"metrics registered twice: {', '.join(sorted(taken))}")
        self._names |= names
        self._collectors.append(collector)

    def collect(self) -> Iterable[Family]:
        for collector in list(self._collectors):
            yield from collector.collect()

    def render(self) -> bytes:
        return "".join(family.render() for family in self.collect()).encode()

    def value(self, sample: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value, by the name it is written under (`..._total`, `..._bucket`)."""
        wanted = sorted((labels or {}).items())
        for family in self.collect():
            for suffix, have, value in family.samples:
                if family.name + suffix == sample and sorted(have) == wanted:
                    return value
        return None


class _Cell:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Counter:
    """A counter, with or without labels: `labels(...).inc()`, or `inc()` without."""

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        registry: Registry | None = None,
    ) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.cells: dict[tuple[str, ...], _Cell] = {} if labelnames else {(): _Cell()}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Cell:
        cell = self.cells.get(values)
        if cell is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            cell = self.cells[values] = _Cell()
        return cell

    def inc(self, amount: float = 1.0) -> None:
        self.cells[()].inc(amount)

    def collect(self) -> Iterable[Family]:
        family = Family(self.name, self.doc, "counter", self.labelnames)
        for values, cell in list(self.cells.items()):
            family.add(values, cell.value, created=cell.created)
        return [family]


class Gauge:
    """A gauge without labels: set, or read from a function when scraped."""

    def __init__(self, name: str, doc: str, registry: Registry | None = None) -> None:
        self.name = name
        self.doc = doc
        self.value = 0.0
        self._function: Callable[[], float] | None = None
        if registry is not None:
            registry.register(self)

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self._function = function

    def collect(self) -> Iterable[Family]:
        family = Family(self.name, self.doc, "gauge")
        family.add((), self._function() if self._function is not None else self.value)
        return [family]
