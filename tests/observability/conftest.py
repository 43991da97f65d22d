"""Observability tests reuse the edge fixtures (edges in-process, an HTTP session)."""

from tests.edge.conftest import http, start_edge

__all__ = ["http", "start_edge"]
