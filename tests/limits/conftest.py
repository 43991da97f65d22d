"""The edge fixtures (in-process edges, a snapshot server) for the limits' HTTP tests."""

from tests.edge.conftest import http, snapshots, start_edge

__all__ = ["http", "snapshots", "start_edge"]
