"""The edge fixtures (in-process edges, a snapshot server) for the limits' HTTP tests, and a
Valkey shared by a module's property-test examples."""

from collections.abc import Iterator

import pytest

from tests.edge.conftest import http, snapshots, start_edge
from tests.support.valkey import ValkeyServer, running_valkey

__all__ = ["http", "snapshots", "start_edge"]


@pytest.fixture(scope="module")
def valkey_once() -> Iterator[ValkeyServer]:
    """One Valkey for every example of a property test in the module."""
    with running_valkey() as server:
        yield server
