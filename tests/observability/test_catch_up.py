"""An edge that cannot reach any control plane keeps serving, then reports what it kept."""

from __future__ import annotations

import aiohttp

from corral.config import EdgeObservabilityConfig
from tests.controlplane.harness import etcd_config, running
from tests.edge.conftest import StartEdge, running_agents
from tests.fakes import FakeServer, running_fakes
from tests.observability.test_cluster_traffic import get_traffic
from tests.observability.waits import serving
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually

MODEL = "m"


async def test_edge_catches_up_after_an_outage(etcd: EtcdCluster, start_edge: StartEdge) -> None:
    """Requests served while the control plane was gone all show once it is back."""
    cfg = etcd_config(etcd.endpoints, replica_id="cp-1")
    async with (
        running_fakes(FakeServer("vllm", [MODEL], "gpu-a")) as fakes,
        running_agents(cfg.listen, fakes),  # outlives the control plane: no goodbye
    ):
        async with running(cfg) as cp:
            edge = await start_edge(
                None,
                controlplane=(cp,),
                edge_id="edge-c",
                observability=EdgeObservabilityConfig(traffic_interval_seconds=0.2),
            )
            await eventually(lambda: serving(edge, MODEL, 1), within=30)
            await _send(edge.url, 10)

            async def ten() -> bool:
                return (await get_traffic(cp)).requests == 10

            await eventually(ten, within=20)
        # The control plane (and the agent) are gone; the edge serves from its snapshot.
        await _send(edge.url, 25)
        async with running(cfg) as cp:

            async def all_of_them() -> bool:
                return (await get_traffic(cp)).requests == 35

            await eventually(all_of_them, within=30)
            metrics = await edge.metrics()
            assert "corral_edge_controlplane_connected" in metrics


async def _send(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            async with http.post(
                f"{url}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": str(i)}]},
            ) as resp:
                assert resp.status == 200, await resp.text()
