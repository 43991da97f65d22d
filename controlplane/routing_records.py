"""The routing records a replica holds (spec, status, drain, alias, provider, fallback; raw
bytes by kind and name), decoded on read into backends, aliases and snapshots. The store
side (list, watch, versions, publishing) is controlplane/state.py's RoutingView."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from controlplane import hosted
from controlplane.keys import DrainFlag, RoutingKind
from corral.v1 import routing_pb2, types_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltSnapshot:
    """One snapshot, built and serialized once, however many edges it goes to."""

    snapshot: types_pb2.Snapshot
    # A serialized WatchSnapshotsResponse carrying the snapshot.
    payload: bytes

    @property
    def version(self) -> int:
        return self.snapshot.version

    @property
    def cluster_id(self) -> str:
        return self.snapshot.cluster_id


Records = dict[RoutingKind, dict[str, bytes]]


def empty_records() -> Records:
    return {kind: {} for kind in RoutingKind}


class RoutingRecords:
    """Raw records by kind and name, with each backend decoded once per change."""

    def __init__(self) -> None:
        self._records = empty_records()
        self._backend_cache: dict[str, types_pb2.Backend | None] = {}

    def _apply_record(self, kind: RoutingKind, name: str, value: bytes | None) -> bool:
        table = self._records[kind]
        old = table.get(name)
        if value is None:
            if old is None:
                return False
            del table[name]
        else:
            if old == value:
                return False
            table[name] = value
        if kind is not RoutingKind.ALIAS and kind is not RoutingKind.FALLBACK:
            self._backend_cache.pop(name, None)
        return True

    def backend(self, name: str) -> types_pb2.Backend | None:
        if name in self._backend_cache:
            return self._backend_cache[name]
        raw_spec = self._records[RoutingKind.SPEC].get(name)
        backend: types_pb2.Backend | None = None
        if raw_spec is None and name in self._records[RoutingKind.PROVIDER]:
            backend = hosted.backend_of(
                name,
                self._records[RoutingKind.PROVIDER][name],
                self._records[RoutingKind.PROVIDER_HEALTH].get(name),
            )
            if backend is not None:
                backend.drained = name in self._records[RoutingKind.DRAIN]
            self._backend_cache[name] = backend
            return backend
        if raw_spec is not None:
            backend = types_pb2.Backend()
            try:
                backend.ParseFromString(raw_spec)
                raw_status = self._records[RoutingKind.STATUS].get(name)
                if raw_status is not None:
                    backend.status.ParseFromString(raw_status)
            except DecodeError:
                log.warning("backend %r: undecodable record in the store; left out", name)
                backend = None
            else:
                # The key is authoritative for the name.
                backend.spec.name = name
                backend.drained = name in self._records[RoutingKind.DRAIN]
        self._backend_cache[name] = backend
        return backend

    def backend_names(self) -> list[str]:
        """Agents' backends and hosted providers (an agent's backend wins a name clash)."""
        return sorted(self._records[RoutingKind.SPEC].keys() | self._records[RoutingKind.PROVIDER])

    def backends(self) -> list[types_pb2.Backend]:
        found = (self.backend(name) for name in self.backend_names())
        return [b for b in found if b is not None]

    def records(self, kind: RoutingKind) -> dict[str, bytes]:
        """The raw stored records of one kind, by name (providers, fallback chains)."""
        return dict(self._records[kind])

    def drain_flag(self, name: str) -> DrainFlag | None:
        raw = self._records[RoutingKind.DRAIN].get(name)
        return DrainFlag.decode(raw) if raw is not None else None

    def aliases(self) -> list[types_pb2.ModelAlias]:
        out: list[types_pb2.ModelAlias] = []
        for name, raw in sorted(self._records[RoutingKind.ALIAS].items()):
            alias = types_pb2.ModelAlias()
            try:
                alias.ParseFromString(raw)
            except DecodeError:
                log.warning("alias %r: undecodable record in the store; left out", name)
                continue
            alias.name = name
            out.append(alias)
        return out

    def alias(self, name: str) -> types_pb2.ModelAlias | None:
        return next((a for a in self.aliases() if a.name == name), None)

    def build(self, version: int, cluster_id: str) -> BuiltSnapshot:
        """A snapshot of the records, named `version`, built and serialized once."""
        snapshot = types_pb2.Snapshot(
            version=version,
            cluster_id=cluster_id,
            backends=self.backends(),
            aliases=self.aliases(),
            created_unix_ms=int(time.time() * 1000),
            fallbacks=hosted.decode_all(self._records[RoutingKind.FALLBACK]),
        )
        payload = routing_pb2.WatchSnapshotsResponse(snapshot=snapshot).SerializeToString()
        return BuiltSnapshot(snapshot=snapshot, payload=payload)
