"""Checks on an edge's traffic report before anything of it is stored."""

from __future__ import annotations

from controlplane.errors import InvalidArgumentError
from controlplane.validation import MAX_AGENT_ID, MAX_MODEL_ID, MAX_NAME, check_text
from corral import traffic as hist
from corral.v1 import traffic_pb2

MAX_SLICES = 120
MAX_CELLS = 1000
# Slices older than this are of no use to any window.
MAX_AGE_MS = 62 * 60 * 1000


def check_report(request: traffic_pb2.ReportTrafficRequest, now_ms: int | None = None) -> int:
    """Raise InvalidArgumentError for a report the view could not use safely; drop slices
    too old for any window; return the highest seq of the report (to acknowledge)."""
    import time

    now = now_ms if now_ms is not None else int(time.time() * 1000)
    check_text(request.edge_id, "edge_id", MAX_AGENT_ID)
    if not request.edge_id:
        raise InvalidArgumentError("edge_id is required")
    check_text(request.incarnation, "incarnation", MAX_AGENT_ID)
    if len(request.slices) > MAX_SLICES:
        raise InvalidArgumentError(f"at most {MAX_SLICES} slices per report")
    for piece in request.slices:
        if piece.end_unix_ms < piece.start_unix_ms or piece.end_unix_ms > now + 60_000:
            raise InvalidArgumentError("a slice's times are out of order or in the future")
        if len(piece.cells) > MAX_CELLS:
            raise InvalidArgumentError(f"at most {MAX_CELLS} cells per slice")
        for cell in piece.cells:
            check_text(cell.backend, "backend", MAX_NAME)
            # Any model id registration takes (a label of the edge's routes).
            check_text(cell.model, "model", MAX_MODEL_ID)
            check_text(cell.team, "team", MAX_NAME)
            if len(cell.latency) > hist.SIZE or len(cell.ttft) > hist.SIZE:
                raise InvalidArgumentError(f"at most {hist.SIZE} histogram buckets")
    acked = max((piece.seq for piece in request.slices), default=0)
    # Drop what no window can show rather than refuse the report (an edge catching up).
    fresh = [piece for piece in request.slices if piece.end_unix_ms > now - MAX_AGE_MS]
    if len(fresh) != len(request.slices):
        kept = list(fresh)
        del request.slices[:]
        request.slices.extend(kept)
    return acked
