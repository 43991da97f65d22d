"""The usage spool: batches a sink could not take, kept on disk (JSON lines) until replayed.

One file per process (`usage-spool-<edge id>-<pid>.jsonl`): the workers of one edge never
write one file, and a process that starts after a crash adopts the spools of dead ones.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Final

import orjson

from corral.config import EdgeConfig
from edge.gateway.records import Row, from_dict
from edge.gateway.sinks import sqlite_path

_COPY: Final = 1 << 20  # bytes a rewrite holds at a time


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
    rename, so two processes starting together never both take one."""
    adopted = 0
    for other in sorted(spool.parent.glob("usage-spool-*.jsonl")):
        if other == spool:
            continue
        pid = other.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        claimed = spool.with_name(f"{spool.stem}.adopting")
        try:
            other.rename(claimed)
        except FileNotFoundError:
            continue  # another process claimed it first
        data = claimed.read_bytes()
        if data and not data.endswith(b"\n"):
            data += b"\n"  # a line cut by the crash stays a (skipped) line of its own
        append(spool, data)
        claimed.unlink()
        adopted += data.count(b"\n")
    return adopted


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(data)


def read(path: Path, limit: int) -> tuple[list[Row], int]:
    """The first `limit` records of the spool and the byte offset after them, reading no
    more of the file than that (a spool grows for as long as its sink is down)."""
    rows: list[Row] = []
    try:
        with path.open("rb") as spool:
            for _ in range(limit):
                line = spool.readline()
                if not line:
                    break
                with contextlib.suppress(orjson.JSONDecodeError):  # a line cut by a crash
                    rows.append(from_dict(orjson.loads(line)))
            return rows, spool.tell()
    except FileNotFoundError:
        return [], 0


def rewrite(path: Path, offset: int) -> None:
    """The spool without its first `offset` bytes (replayed), copied a MiB at a time."""
    temp = path.with_suffix(".tmp")
    with path.open("rb") as spool:
        spool.seek(offset)
        first = spool.read(_COPY)
        if not first:
            path.unlink(missing_ok=True)
            return
        with temp.open("wb") as out:
            out.write(first)
            shutil.copyfileobj(spool, out, _COPY)
    temp.replace(path)
