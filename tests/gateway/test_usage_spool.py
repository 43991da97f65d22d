"""The usage spool read a batch at a time and cut, its memory bounded by the batch."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson

from edge.gateway import spool
from edge.gateway.call import Call, new_id
from edge.gateway.records import as_dict, row


def _spool(path: Path, count: int, start: int = 0) -> None:
    calls = [Call(new_id(), f"r{start + i}", 0.0, 1_700_000_000.0, "chat") for i in range(count)]
    spool.append(path, b"".join(orjson.dumps(as_dict(row(c, "e", 0.0))) + b"\n" for c in calls))


def test_replayed_batches_are_cut_from_the_front_in_order(tmp_path: Path) -> None:
    """Read 20, cut them, read the next 20: every record once, in order, then no file."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 50)
    seen: list[str] = []
    while True:
        rows, offset = spool.read(path, 20)
        if not rows:
            break
        seen += [as_dict(r)["request_id"] for r in rows]
        spool.rewrite(path, offset)
    assert seen == [f"r{i}" for i in range(50)] and not path.exists()


def test_reading_a_batch_of_a_large_spool_holds_only_the_batch(tmp_path: Path) -> None:
    """A spool of 10+ MB: reading 100 records and cutting them holds a few MB at most."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 30_000)
    size = path.stat().st_size
    assert size > 10_000_000
    tracemalloc.start()
    try:
        rows, offset = spool.read(path, 100)
        spool.rewrite(path, offset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == 100 and peak < 5_000_000 < size, peak  # copied a MiB at a time
    [following], _ = spool.read(path, 1)
    assert as_dict(following)["request_id"] == "r100"
