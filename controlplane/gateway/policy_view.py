"""Each replica's view of the gateway policy (teams, keys, prices): list, watch, publish.

The view lists ``policy/`` at revision R and watches from R + 1; every change wakes the
policy streams at once (policy changes are rare and a revocation must reach every edge within
a second, so nothing is paced). The version of what the view holds is the store revision at
which it is known to be the store's content: a listing's revision, or a watched event's.
Every version names real store content, so an edge moving between replicas never goes back:
a replica behind an edge's version lists again (`catch_up`) and names the content by that
listing's (later) revision. When the store's history itself went back (etcd restored from a
backup), the view takes a listing whole and the policy gets a new history epoch
(`policy/epoch`, controlplane/versions.py), so edges take it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from controlplane.following import follow
from controlplane.gateway import records
from controlplane.keys import KeyLayout
from controlplane.store.base import EventType, KeyValue, Store, WatchBatch
from controlplane.versions import epoch_of, history_label, new_epoch
from corral.v1 import gateway_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltPolicy:
    """One policy, built and serialized once, however many edges it goes to."""

    policy: gateway_pb2.Policy
    # A serialized WatchPolicyResponse carrying it.
    payload: bytes

    @property
    def version(self) -> int:
        return self.policy.version

    @property
    def cluster_id(self) -> str:
        return self.policy.cluster_id


class PolicyView:
    def __init__(self, store: Store, layout: KeyLayout) -> None:
        self._store = store
        self._layout = layout
        self._prefix = records.policy_prefix(layout)
        self._epoch_key = records.policy_epoch(layout)
        self._records: dict[bytes, bytes] = {}
        self._built: BuiltPolicy | None = None
        # The store's cluster id; with the epoch (a record), the policies' cluster id.
        self.store_cluster = ""
        # The store's history went back: the next listing is taken whole, and the epoch held
        # before is replaced once listed (see RoutingView.rewound).
        self._take_whole = False
        self._rewound_epoch: str | None = None
        self.version = 0
        # The newest revision whose events are in the view.
        self._applied = 0
        self.listings = 0
        # Set once the first listing is in.
        self.listed = asyncio.Event()
        self._changed = asyncio.Event()
        self._progress = asyncio.Event()
        self._relist_lock = asyncio.Lock()

    @property
    def epoch(self) -> str:
        """The epoch of the store's policy history ("" until it first went back)."""
        return epoch_of(self._records.get(self._epoch_key))

    @property
    def cluster_id(self) -> str:
        """The cluster id policies carry: the store's, with its policy history's epoch."""
        return history_label(self.store_cluster, self.epoch)

    async def run(self) -> None:
        """List then watch, forever; re-list on compaction, retry while the store is down."""
        await follow(
            self._store,
            self._prefix,
            "policy",
            self._listed,
            self.apply_batch,
            on_rewound=self.rewound,
        )

    async def _listed(self, revision: int, kvs: Sequence[KeyValue]) -> int:
        self.apply_listing(revision, kvs, self._store.cluster_id)
        if self._rewound_epoch is not None:
            if self.epoch == self._rewound_epoch:
                await self.renew_epoch()  # its event reaches the view by the watch
            self._rewound_epoch = None
        return self._applied

    def rewound(self) -> None:
        """The store's history went back under the view: take the next listing whole."""
        self._take_whole = True
        if self._rewound_epoch is None:
            self._rewound_epoch = self.epoch

    async def renew_epoch(self) -> int:
        """Name the store's policy by a new epoch (its history went back past what an edge
        applied); the revision at which the store has it, for the view to reach."""
        return await new_epoch(self._store, self._epoch_key, self.epoch)

    async def catch_up(self, at_least: int) -> None:
        """List again so the version reaches at_least (an edge came from a replica ahead)."""
        async with self._relist_lock:
            if self.version >= at_least:
                return
            revision, kvs = await self._store.get_prefix(self._prefix)
            self.apply_listing(revision, kvs, self._store.cluster_id)

    def apply_listing(self, revision: int, kvs: Sequence[KeyValue], cluster_id: str) -> None:
        self.listings += 1
        self.listed.set()
        if cluster_id != self.store_cluster or self._take_whole:
            self.store_cluster = cluster_id
            self._take_whole = False
            self.version = 0
            self._applied = 0
        elif revision <= self._applied:
            self._signal_progress()
            return
        self._records = {kv.key: kv.value for kv in kvs}
        self._applied = revision
        self._set_version(revision)
        self._signal_progress()

    def apply_batch(self, batch: WatchBatch) -> None:
        changed = False
        for event in batch.events:
            kv = event.kv
            if kv.mod_revision <= self._applied:
                continue  # already in the view (we listed after it)
            self._applied = kv.mod_revision
            if event.type is EventType.PUT:
                self._records[kv.key] = kv.value
            else:
                self._records.pop(kv.key, None)
            changed = True
        if changed:
            self._set_version(self._applied)
        self._signal_progress()

    def _set_version(self, version: int) -> None:
        if version <= self.version:
            return
        self.version = version
        self._built = None
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _signal_progress(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    def changed(self) -> asyncio.Event:
        """Set when the version next changes; take it before reading the version."""
        return self._changed

    def wake(self) -> None:
        """Wake every stream (at shutdown, so they look and leave)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_revision(self, revision: int) -> None:
        """Wait until the view has applied store revision `revision` (read-your-writes)."""
        while self._applied < revision:
            await self._progress.wait()

    def current(self) -> BuiltPolicy:
        """The policy at the view's version, built once per version."""
        built = self._built
        if built is None:
            policy = self._build()
            payload = gateway_pb2.WatchPolicyResponse(policy=policy).SerializeToString()
            built = self._built = BuiltPolicy(policy=policy, payload=payload)
        return built

    def _build(self) -> gateway_pb2.Policy:
        policy = gateway_pb2.Policy(
            version=self.version,
            cluster_id=self.cluster_id,
            created_unix_ms=int(time.time() * 1000),
        )
        sections = (
            (records.teams_prefix(self._layout), policy.teams),
            (records.keys_prefix(self._layout), policy.keys),
            (records.prices_prefix(self._layout), policy.prices),
        )
        for key, value in sorted(self._records.items()):
            for prefix, field in sections:
                if key.startswith(prefix):
                    try:
                        field.add().ParseFromString(value)
                    except DecodeError:
                        del field[-1]
                        log.warning("undecodable policy record %r; left out", key)
                    break
        return policy
