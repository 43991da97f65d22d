"""State stores for the control plane: one interface (`Store`), two implementations.

`MemoryStore` serves one process (`corral up`, `--store memory`); `EtcdStore` serves several
replicas over one etcd cluster. Both pass tests/controlplane/test_store_contract.py.
"""

from controlplane.store.base import (
    CompactedError,
    EventType,
    KeyValue,
    LeaseNotFoundError,
    Store,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    WatchBatch,
    WatchEvent,
)
from controlplane.store.etcd import EtcdStore
from controlplane.store.memory import MemoryStore

__all__ = [
    "CompactedError",
    "EtcdStore",
    "EventType",
    "KeyValue",
    "LeaseNotFoundError",
    "MemoryStore",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailableError",
    "WatchBatch",
    "WatchEvent",
]
