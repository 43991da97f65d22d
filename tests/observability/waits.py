"""Readiness waits shared by the observability tests."""

from __future__ import annotations

import aiohttp

from tests.edge.conftest import RunningEdge


async def serving(edge: RunningEdge, model: str, backends: int) -> bool:
    """The edge knows `backends` backends and routes `model`."""
    if (await edge.readyz()).get("backends") != backends:
        return False
    async with aiohttp.ClientSession() as http, http.get(f"{edge.url}/v1/models") as resp:
        return resp.status == 200 and model in [m["id"] for m in (await resp.json())["data"]]
