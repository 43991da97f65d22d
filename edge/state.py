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


def save_snapshot(state_dir: str, snapshot: types_pb2.Snapshot) -> None:
    """Write atomically: a temporary file in the same directory, fsync, then rename."""
    path = snapshot_path(state_dir)
    tmp = path.with_name(f"{FILE_NAME}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(snapshot.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
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
