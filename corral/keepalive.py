"""Keepalive of every connection to the control plane (grpcio's channels in corral/channels.py,
the edge's grpclib ones in edge/cp_calls.py): pings find a dead connection (a pulled cable)
within keepalive + timeout, and go on without calls in flight, since our streams are long
and often quiet."""

from __future__ import annotations

from typing import Final

KEEPALIVE_MS: Final = 20_000
KEEPALIVE_TIMEOUT_MS: Final = 10_000
