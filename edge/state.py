"""The last applied snapshot on disk, so a restarted edge serves without a control plane."""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf.message import DecodeError

from corral.v1 import types_pb2
from edge.errors import SnapshotError

FILE_NAME = "snapshot.pb"


def snapshot_path(state_dir: str) -> Path:
    return Path(state_dir) / FILE_NAME


def write_atomically(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """A temporary file in the same directory, fsync, then rename, so a reader finds the old
    file or the new one whole; OSError when that fails (the temporary file removed)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def save_snapshot(state_dir: str, snapshot: types_pb2.Snapshot) -> None:
    """Write atomically (write_atomically)."""
    path = snapshot_path(state_dir)
    try:
        write_atomically(path, snapshot.SerializeToString())
    except OSError as exc:
        raise SnapshotError(f"cannot persist the snapshot to {path}: {exc.strerror}") from exc


def load_snapshot(state_dir: str) -> types_pb2.Snapshot | None:
    """The persisted snapshot, None when there is none; SnapshotError when unreadable."""
    path = snapshot_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from exc
    snapshot = types_pb2.Snapshot()
    try:
        snapshot.ParseFromString(data)
    except DecodeError as exc:
        raise SnapshotError(f"{path} is not a valid snapshot: {exc}") from exc
    return snapshot
