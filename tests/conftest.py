"""Shared fixtures: real etcd and Valkey/Redis on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import EtcdCluster
from tests.support.valkey import ValkeyServer, running_valkey


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    """A fresh single-member etcd, removed after the test."""
    cluster = EtcdCluster.create(1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A fresh three-member etcd cluster, removed after the test."""
    cluster = EtcdCluster.create(3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def valkey() -> Iterator[ValkeyServer]:
    """A fresh Valkey/Redis server on a free loopback port, removed after the test."""
    with running_valkey() as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n`), the fault suite's tests share one worker: they build one
    topology of network namespaces on fixed addresses, and a package-scoped cluster."""
    for item in items:
        if "tests/faults/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("netns"))
