"""The security tests' fixtures: the edge tests' fixtures, shared by name."""

from __future__ import annotations

from tests.edge import conftest as edge_fixtures

# The edge tests' fixtures, shared by name.
http = edge_fixtures.http
start_edge = edge_fixtures.start_edge
