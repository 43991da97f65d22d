"""The edge fixtures (snapshot server, in-process edges, an HTTP client) for gateway tests."""

from tests.edge.conftest import http, snapshots, start_edge

__all__ = ["http", "snapshots", "start_edge"]
