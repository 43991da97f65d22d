"""The usage spool: batches a sink could not take, kept on disk (JSON lines) until replayed.

One file per process (`usage-spool-<edge id>-<pid>.jsonl`): the workers of one edge never
write one file, and a process that starts after a crash adopts the spools of dead ones.

A replay moves a cursor, not the file, so a pass costs what it replays: `read` takes the
records after the cursor and, once a sink has them, `acknowledge` saves the offset after them
in `<spool>.offset`. The spool goes when all of it is replayed, and is compacted (its tail
copied to a new file) only when the replayed prefix is over half of it and over `_COMPACT`:
each byte copied is paid for by a byte replayed. A cursor names its file (inode, first line):
one that outlived its file in a crash is ignored, so a crash costs duplicates (writes are
idempotent), never a record.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
from pathlib import Path
from typing import BinaryIO, Final

import orjson

from corral.config import EdgeConfig
from edge.gateway.records import Row, from_dict
from edge.gateway.sinks import sqlite_path

_COPY: Final = 1 << 20  # bytes a copy holds at a time
_COMPACT: Final = 16 << 20  # a replayed prefix smaller than this is never copied away
_HEAD: Final = 4096  # bytes of its first line that name a file in its cursor
# Only its own process writes a spool, but one thread at a time: a replay step cut short by
# a stop (its thread still running) must not meet the appends of the final close().
_LOCK: Final = threading.Lock()


def spool_file(config: EdgeConfig, edge_id: str, pid: int | None = None) -> Path | None:
    """This process's spool: one per process (workers of one edge share an edge id), named
    with its pid so a later process can tell a dead one's spool and adopt it."""
    usage = config.usage
    folder = usage.spool_dir or config.state_dir
    if not folder and usage.sink == "sqlite" and sqlite_path(config):
        folder = str(Path(sqlite_path(config)).parent)
    if not folder:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", edge_id)
    return Path(folder) / f"usage-spool-{safe}-{os.getpid() if pid is None else pid}.jsonl"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def adopt_orphans(spool: Path) -> int:
    """Move the spools of processes that are gone (a crash, a restart) into ours, to be
    replayed with it; returns how many lines came. Each orphan is claimed by an atomic
    rename, so two processes starting together never both take one; a claim whose process
    died before it was appended (`.adopting`) is an orphan too."""
    claimed = spool.with_name(f"{spool.stem}.adopting")
    adopted = _take(spool, claimed) if claimed.exists() else 0  # left by our pid's last owner
    for other in sorted(spool.parent.glob("usage-spool-*")):
        if other.suffix not in (".jsonl", ".adopting") or other in (spool, claimed):
            continue
        pid = other.stem.rsplit("-", 1)[-1]
        if pid.isascii() and pid.isdigit() and _alive(int(pid)):
            continue
        try:
            other.rename(claimed)
        except FileNotFoundError:
            continue  # another process claimed it first
        with contextlib.suppress(FileNotFoundError):  # its cursor goes with it
            _cursor(other).replace(_cursor(claimed))
        adopted += _take(spool, claimed)
    return adopted


def _take(spool: Path, claimed: Path) -> int:
    """Append what of a claimed spool its own cursor has not passed to ours; the lines that
    came. A crash before the claim is gone takes it again: its records twice, never none."""
    lines = 0
    with _LOCK, claimed.open("rb") as source, spool.open("a+b") as out:
        source.seek(_replayed(claimed, source))
        _end_line(out)
        last = b""
        while block := source.read(_COPY):
            out.write(block)
            lines += block.count(b"\n")
            last = block
        if last and not last.endswith(b"\n"):
            out.write(b"\n")  # a line cut by the crash stays a (skipped) line of its own
            lines += 1
    _cursor(claimed).unlink(missing_ok=True)
    claimed.unlink()
    return lines


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, path.open("a+b") as out:
        _end_line(out)
        out.write(data)


def _end_line(out: BinaryIO) -> None:
    """End a line cut by a crash, so that it spoils itself only, not the next record."""
    end = out.seek(0, os.SEEK_END)
    if end:
        out.seek(end - 1)
        if out.read(1) != b"\n":
            out.write(b"\n")


def read(path: Path, limit: int) -> tuple[list[Row], int]:
    """Up to `limit` records after the replay cursor and the byte offset after them, reading
    no more of the file than that (a spool grows for as long as its sink is down)."""
    rows: list[Row] = []
    with _LOCK:  # no append is half written: a line without its end was cut by a crash
        try:
            spool = path.open("rb")
        except FileNotFoundError:
            return [], 0
        with spool:
            spool.seek(_replayed(path, spool))
            for _ in range(limit):
                line = spool.readline()
                if not line:
                    break
                with contextlib.suppress(orjson.JSONDecodeError):  # a line cut by a crash
                    rows.append(from_dict(orjson.loads(line)))
            return rows, spool.tell()


def acknowledge(path: Path, offset: int) -> None:
    """The records before `offset` (from `read`) are in the sink: the cursor moves there; the
    spool goes when that is all of it, and is compacted when the replayed prefix is large.
    A crash before the cursor is saved replays that batch again: the only one replayed twice."""
    with _LOCK:  # appends wait: all that is dropped below was replayed
        try:
            spool = path.open("rb")
        except FileNotFoundError:
            return
        with spool:
            size = os.fstat(spool.fileno()).st_size
            if offset >= size:
                # The spool before its cursor: a cursor left by a crash between names a file
                # that is gone, and no later spool starts with its first line.
                path.unlink()
                _cursor(path).unlink(missing_ok=True)
            elif offset >= _COMPACT and 2 * offset > size:
                _compact(path, spool, offset)
            else:
                _save(path, spool, offset)


def _compact(path: Path, spool: BinaryIO, offset: int) -> None:
    """The spool without its first `offset` bytes (replayed), copied a MiB at a time. The
    copy replaces the spool before the cursor goes: a crash between leaves a cursor naming
    the old file, which the copy is not, so the copy is replayed from its start, as it must."""
    temp = path.with_name(path.name + ".tmp")
    spool.seek(offset)
    with temp.open("wb") as out:
        shutil.copyfileobj(spool, out, _COPY)
    temp.replace(path)
    _cursor(path).unlink(missing_ok=True)


def _cursor(path: Path) -> Path:
    return path.with_name(path.name + ".offset")


def _identity(spool: BinaryIO) -> tuple[int, str]:
    """What names a spool in its cursor: its inode and a digest of its first line (records
    have unique ids, so a later file in a reused inode starts with another line)."""
    spool.seek(0)
    head = hashlib.blake2b(spool.readline(_HEAD), digest_size=8).hexdigest()
    return os.fstat(spool.fileno()).st_ino, head


def _save(path: Path, spool: BinaryIO, offset: int) -> None:
    """The cursor, written whole and renamed over the last: a crash leaves one of the two.
    Not synced: one torn by a power cut is ignored (the spool replayed from its start)."""
    inode, head = _identity(spool)
    cursor = _cursor(path)
    temp = cursor.with_name(cursor.name + ".tmp")
    temp.write_text(f"{offset} {inode} {head}\n")
    temp.replace(cursor)


def _replayed(path: Path, spool: BinaryIO) -> int:
    """The offset the cursor of `spool` (open at `path`) saved; 0 (from the start) when there
    is none, or it is torn, names another file or lies past this one's end."""
    try:
        offset, inode, head = _cursor(path).read_text().split()
        replayed = int(offset)
        named = (int(inode), head)
    except (OSError, ValueError):  # UnicodeDecodeError too
        return 0
    size = os.fstat(spool.fileno()).st_size
    return replayed if 0 < replayed <= size and named == _identity(spool) else 0
