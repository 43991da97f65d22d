"""What the agent-protocol tests share: a barrier that returns once the replica's view holds
every earlier write.
"""

from __future__ import annotations

from corral.v1 import admin_pb2, types_pb2
from tests.controlplane import harness as h


async def _barrier(address: str) -> None:
    """An admin write that returns once this replica's view holds every earlier write."""
    async with h.admin(address) as admin:
        await admin.SetAlias(
            admin_pb2.SetAliasRequest(alias=types_pb2.ModelAlias(name="barrier", targets=["x"]))
        )
