"""The usage spool replayed a batch at a time behind a cursor: what a pass replays is all it
reads or writes, a crash replays a batch twice at worst, and no record is ever lost."""

from __future__ import annotations

import subprocess
import tracemalloc
from pathlib import Path

import orjson
import pytest

from corral.config import UsageConfig
from edge.gateway import spool, usage
from edge.gateway.call import Call, new_id
from edge.gateway.records import Row, as_dict, row
from edge.gateway.sinks import SinkError
from edge.gateway.usage import UsageRecorder


def _spool(path: Path, count: int, start: int = 0) -> None:
    calls = [Call(new_id(), f"r{start + i}", 0.0, 1_700_000_000.0, "chat") for i in range(count)]
    spool.append(path, b"".join(orjson.dumps(as_dict(row(c, "e", 0.0))) + b"\n" for c in calls))


def _ids(rows: list[Row]) -> list[str]:
    return [str(as_dict(r)["request_id"]) for r in rows]


def _names(start: int, stop: int) -> list[str]:
    return [f"r{i}" for i in range(start, stop)]


def _replay_all(path: Path, limit: int) -> list[str]:
    """Read and acknowledge `limit` records at a time until none is left."""
    seen: list[str] = []
    while True:
        rows, offset = spool.read(path, limit)
        if not rows:
            return seen
        seen += _ids(rows)
        spool.acknowledge(path, offset)


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    gone = subprocess.Popen(["true"])  # a pid that no longer runs
    gone.wait()
    return gone.pid


def test_replayed_batches_come_in_order_then_the_spool_goes(tmp_path: Path) -> None:
    """Read 20, acknowledge, read the next 20: every record once, in order, then no file."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 50)
    assert _replay_all(path, 20) == _names(0, 50)
    assert _left(tmp_path) == []  # neither the spool nor its cursor is left


def test_reading_a_batch_of_a_large_spool_holds_only_the_batch(tmp_path: Path) -> None:
    """A spool of 10+ MB: reading 100 records and acknowledging them holds a few MB at most."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 30_000)
    size = path.stat().st_size
    assert size > 10_000_000
    tracemalloc.start()
    try:
        rows, offset = spool.read(path, 100)
        spool.acknowledge(path, offset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == 100 and peak < 5_000_000 < size, peak
    [following], _ = spool.read(path, 1)
    assert as_dict(following)["request_id"] == "r100"


def test_a_replay_pass_never_rewrites_what_it_has_passed(tmp_path: Path) -> None:
    """40 batches replayed: the spool stays one file, its bytes untouched, until it goes."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 400)
    original, inode = path.read_bytes(), path.stat().st_ino
    seen: list[str] = []
    while True:
        rows, offset = spool.read(path, 10)
        if not rows:
            break
        seen += _ids(rows)
        spool.acknowledge(path, offset)
        if path.exists():
            assert path.stat().st_ino == inode and path.read_bytes() == original
    assert seen == _names(0, 400) and not path.exists()


def test_compaction_copies_fewer_bytes_than_the_pass_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool over the compaction size: all the copies of a pass add up to less than it."""
    monkeypatch.setattr(spool, "_COMPACT", 64 << 10)
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 2000)
    size, inode = path.stat().st_size, path.stat().st_ino
    assert size > 10 * spool._COMPACT
    copied = 0
    seen: list[str] = []
    while True:
        rows, offset = spool.read(path, 50)
        if not rows:
            break
        seen += _ids(rows)
        spool.acknowledge(path, offset)
        if path.exists() and path.stat().st_ino != inode:  # compacted: a new file, its tail
            inode = path.stat().st_ino
            copied += path.stat().st_size
    assert seen == _names(0, 2000) and _left(tmp_path) == []
    assert 0 < copied < size


def test_a_batch_not_acknowledged_before_a_crash_is_replayed_once_more(tmp_path: Path) -> None:
    """A crash after a sink took a batch and before its cursor was saved: that batch twice."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 50)
    _, offset = spool.read(path, 20)
    spool.acknowledge(path, offset)
    taken, _ = spool.read(path, 20)  # written to the sink, then the crash
    assert _ids(taken) == _names(20, 40)
    assert _replay_all(path, 20) == _names(20, 50)  # the next process, from the cursor


def test_records_appended_between_read_and_acknowledge_are_kept(tmp_path: Path) -> None:
    """A batch spooled while the whole spool is being replayed is replayed next, not dropped."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 20)
    rows, offset = spool.read(path, 100)
    _spool(path, 5, start=20)
    spool.acknowledge(path, offset)
    assert _ids(rows) == _names(0, 20) and _replay_all(path, 100) == _names(20, 25)


def test_a_cursor_that_outlived_its_spool_is_ignored(tmp_path: Path) -> None:
    """A crash between the spool's removal and its cursor's: a new spool is replayed whole."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    cursor = tmp_path / "usage-spool-e-1.jsonl.offset"
    _spool(path, 30)
    _, offset = spool.read(path, 20)
    spool.acknowledge(path, offset)
    left = cursor.read_bytes()
    assert _replay_all(path, 20) == _names(20, 30) and not path.exists()
    cursor.write_bytes(left)
    _spool(path, 30, start=100)
    assert _replay_all(path, 100) == _names(100, 130)


def test_a_cursor_left_by_a_crash_in_a_compaction_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between a compaction and the cursor's removal: the copy is replayed whole."""
    monkeypatch.setattr(spool, "_COMPACT", 1)
    path = tmp_path / "usage-spool-e-1.jsonl"
    cursor = tmp_path / "usage-spool-e-1.jsonl.offset"
    _spool(path, 100)
    _, offset = spool.read(path, 10)
    spool.acknowledge(path, offset)  # a tenth: a cursor, no compaction
    left = cursor.read_bytes()
    _, offset = spool.read(path, 50)
    spool.acknowledge(path, offset)  # past half: compacted, no cursor
    assert not cursor.exists()
    cursor.write_bytes(left)  # its offset lies within the copy: only its file name is wrong
    assert _replay_all(path, 100) == _names(60, 100)


def test_a_line_cut_by_a_crash_spoils_only_itself(tmp_path: Path) -> None:
    """A spool whose last line a crash cut, appended to again: every whole record replayed."""
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 3)
    spool.append(path, b'{"id":"cut')
    _spool(path, 3, start=3)
    assert _replay_all(path, 100) == _names(0, 6)


def test_an_orphan_is_adopted_from_its_own_cursor_after_ours(tmp_path: Path) -> None:
    """A dead process's spool, half replayed: only its rest comes, after what we have left."""
    ours = tmp_path / "usage-spool-e-1.jsonl"
    orphan = tmp_path / f"usage-spool-e-{_dead_pid()}.jsonl"
    _spool(orphan, 50)
    _, offset = spool.read(orphan, 20)
    spool.acknowledge(orphan, offset)
    _spool(ours, 10, start=100)
    _, offset = spool.read(ours, 5)
    spool.acknowledge(ours, offset)
    assert spool.adopt_orphans(ours) == 30
    assert _left(tmp_path) == [ours.name, f"{ours.name}.offset"]
    assert _replay_all(ours, 100) == _names(105, 110) + _names(20, 50)


def test_a_claim_left_by_a_dead_adopter_is_adopted(tmp_path: Path) -> None:
    """An adopter that died between its claim and its append: the claim is an orphan too."""
    ours = tmp_path / "usage-spool-e-1.jsonl"
    claim = tmp_path / f"usage-spool-e-{_dead_pid()}.adopting"
    _spool(claim, 7)
    _, offset = spool.read(claim, 3)
    spool.acknowledge(claim, offset)
    assert spool.adopt_orphans(ours) == 4
    assert _replay_all(ours, 100) == _names(3, 7) and _left(tmp_path) == []


class _Sink:
    """Takes rows into a list, or fails while `down`."""

    name = "fake"

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.down = False

    async def open(self) -> None:
        pass

    async def write(self, rows: list[Row]) -> None:
        if self.down:
            raise SinkError("down")
        self.rows += rows

    def abandon(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_the_recorder_replays_behind_the_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes of 10 over 25 spooled records, one failed: each lands once, then no spool."""
    monkeypatch.setattr(usage, "_REPLAY_ROWS", 10)
    path = tmp_path / "usage-spool-e-1.jsonl"
    _spool(path, 25)
    sink = _Sink()
    recorder = UsageRecorder(sink, UsageConfig(), "e", path)
    for down in (False, True, False, False, False):
        sink.down = down
        recorder._last_replay = 0.0  # replay now, not after the pause between passes
        await recorder.flush()
    assert _ids(sink.rows) == _names(0, 25) and recorder.counts["replayed"] == 25
    assert _left(tmp_path) == []
