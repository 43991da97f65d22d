"""Opening the control plane's store: etcd or in-memory, as configured, retried with backoff
while no etcd endpoint answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from controlplane.errors import ControlPlaneError
from controlplane.store.base import Store, StoreError, StoreUnavailableError
from corral.backoff import Backoff
from corral.config import ControlPlaneConfig

log = logging.getLogger(__name__)


def make_store(config: ControlPlaneConfig) -> Store:
    if config.store == "memory":
        from controlplane.store.memory import MemoryStore

        return MemoryStore()
    if config.store == "etcd":
        from controlplane.store.etcd import EtcdStore

        return EtcdStore(
            list(config.etcd_endpoints),
            ca_file=config.etcd_ca_file,
            cert_file=config.etcd_cert_file,
            key_file=config.etcd_key_file,
        )
    raise ControlPlaneError(f"unknown store {config.store!r} (expected etcd or memory)")


async def open_store(config: ControlPlaneConfig) -> Store:
    """The started store; waits (with backoff) while no endpoint answers."""
    backoff = Backoff(base=0.1, cap=5.0)
    while True:
        store = make_store(config)
        try:
            await store.start()
        except StoreUnavailableError as exc:
            with contextlib.suppress(StoreError):
                await store.close()
            delay = backoff.next()
            log.warning("store not reachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            continue
        except StoreError as exc:
            raise ControlPlaneError(f"cannot use the {config.store} store: {exc}") from exc
        return store
