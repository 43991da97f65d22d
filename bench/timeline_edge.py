"""`corral edge` with a timestamp at each seam of a request, for bench/timeline.py.

``python -m bench.timeline_edge OUT.json edge ...`` runs `corral edge ...` (one worker: the
stamps are this process's) after wrapping, from outside, the methods a request passes
through on the lane and the fast upstream client:

    arrived    LaneProtocol.data_received      the client's request read
    started    LaneProtocol._serve             its handler's task runs
    sending    _Conn.send (before the write)    the request head built, to the backend
    sent       _Conn.send (after the write)
    answered   _Conn.data_received             the backend's answer read
    writing    answer.head                     the answer's head serialised, to the client
    written    LaneProtocol._next_message      the answer written

One connection at a time is what this measures (the stamps are global): at exit the medians
of each interval over the requests that passed every seam in order go to OUT.json.
The wrappers add a Python call at each seam; bench/timeline.py measures the same edge without
them too.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

SEAMS = ("arrived", "started", "sending", "sent", "answered", "writing", "written")
_now = time.perf_counter_ns
_stamps = dict.fromkeys(SEAMS, 0)
_rows: list[tuple[int, ...]] = []


def _stamp_before(seam: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any) -> Any:
        _stamps[seam] = _now()
        return method(*args)

    return wrapper


def _sent(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any) -> Any:
        _stamps["sending"] = _now()
        try:
            return method(*args)
        finally:
            _stamps["sent"] = _now()

    return wrapper


def _written(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any) -> Any:
        _stamps["written"] = _now()
        times = [_stamps[seam] for seam in SEAMS]
        if all(a < b for a, b in itertools.pairwise(times)):  # one request's seams
            _rows.append(tuple(b - a for a, b in itertools.pairwise(times)))
        return method(*args)

    return wrapper


def install() -> None:
    from edge import h1pool
    from edge.lane import protocol

    lane = protocol.LaneProtocol
    lane.data_received = _stamp_before("arrived", lane.data_received)  # type: ignore[method-assign]
    lane._serve = _stamp_before("started", lane._serve)  # type: ignore[method-assign]
    lane._next_message = _written(lane._next_message)  # type: ignore[method-assign]
    # Imported by name there: replaced in its namespace.
    vars(protocol)["head"] = _stamp_before("writing", vars(protocol)["head"])
    conn = h1pool._Conn
    conn.send = _sent(conn.send)  # type: ignore[method-assign]
    conn.data_received = _stamp_before("answered", conn.data_received)  # type: ignore[method-assign]


def _dump(out: Path) -> None:
    rows = _rows[len(_rows) // 10 :]  # the first tenth warms up
    medians = [statistics.median(column) / 1000 for column in zip(*rows, strict=True)]
    out.write_bytes(orjson.dumps({"requests": len(rows), "medians_us": medians}))


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    install()
    atexit.register(_dump, out)
    from corral.cli import main as cli

    return cli(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
