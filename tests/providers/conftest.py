"""Fixtures of the provider tests: the edge fixtures, shared."""

from tests.edge.conftest import http, snapshots, start_edge

__all__ = ["http", "snapshots", "start_edge"]
