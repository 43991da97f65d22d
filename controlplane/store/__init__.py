"""State stores for the control plane: one interface (`Store`), two implementations.

`MemoryStore` serves one process (`corral up`, `--store memory`); `EtcdStore` serves several
replicas over one etcd cluster. Both pass tests/controlplane/test_store_contract.py.
"""

from controlplane.store.base import (
    CompactedError,
    KeyValue,
    LeaseNotFoundError,
    Store,
    StoreError,
    StoreUnavailableError,
    WatchBatch,
    WatchEvent,
)

__all__ = [
    "CompactedError",
    "KeyValue",
    "LeaseNotFoundError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "WatchBatch",
    "WatchEvent",
]
