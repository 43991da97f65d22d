"""Shared fixtures: real etcd on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import EtcdCluster


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
