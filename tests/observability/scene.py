"""The scene of docs/dashboard.png: four fake backends (one slow, one taken down for a while),
two edges, a control plane serving its dashboard, client traffic; then a screenshot in
headless chromium, `corral status` and GetTraffic through grpcurl, printed.

``PYTHONPATH=. .venv/bin/python -m tests.observability.scene OUT.png``
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys

import aiohttp

import edge
from corral.config import EdgeConfig, EdgeObservabilityConfig, ModelAliasConfig
from corral.status import fetch, render_text
from tests.controlplane.harness import config as cp_config
from tests.controlplane.harness import running
from tests.edge.conftest import running_agents
from tests.fakes import FakeServer, running_fakes
from tests.observability.browser import browser
from tests.support.grpcurl import grpcurl
from tests.support.net import free_port

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


async def load(url: str, model: str, pause: float, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            body = {
                "model": model,
                "stream": random.random() < 0.5,
                "messages": [{"role": "user", "content": f"q{random.random()}"}],
            }
            try:
                async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                    await resp.read()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(pause * random.random())


async def main(out: str) -> None:
    http_address = f"127.0.0.1:{free_port()}"
    cfg = dataclasses.replace(
        cp_config(),
        metrics_listen=http_address,
        replica_id="cp-1",
        aliases=(ModelAliasConfig("llama-8b", (LLAMA, "llama3.1:8b")),),
    )
    fakes = (
        FakeServer("vllm", [LLAMA], "vllm-gpu-1"),
        FakeServer("vllm", [LLAMA], "vllm-gpu-2"),
        FakeServer("ollama", ["llama3.1:8b", "qwen2.5:7b"], "ollama-mac"),
        FakeServer("llamacpp", ["qwen2.5:7b"], "llamacpp-box"),
    )
    async with running(cfg) as cp, running_fakes(*fakes), running_agents(cp, fakes):
        fakes[2].response_delay = 0.8
        fakes[1].response_delay = 0.05
        edges, urls = [], []
        for i in range(2):
            port = free_port()
            config = EdgeConfig(
                listen=f"127.0.0.1:{port}",
                controlplane=(cp,),
                edge_id=f"edge-{i + 1}",
                observability=EdgeObservabilityConfig(traffic_interval_seconds=1.0),
            )
            ready = asyncio.Event()
            edges.append(asyncio.create_task(edge.serve(config, ready=ready)))
            await ready.wait()
            urls.append(f"http://127.0.0.1:{port}")
        await asyncio.sleep(3)
        stop = asyncio.Event()
        mix = (("llama-8b", 0.15), ("llama-8b", 0.2), ("qwen2.5:7b", 0.4))
        loaders = [
            asyncio.create_task(load(url, model, pause, stop))
            for url in urls
            for model, pause in mix
        ]
        await asyncio.sleep(40)
        fakes[3].mode = "error"
        await asyncio.sleep(12)
        fakes[3].mode = "ok"
        await asyncio.sleep(10)
        async with browser() as chromium:
            page = await chromium.new_page(viewport={"width": 1500, "height": 1050})
            await page.goto(f"http://{http_address}/dashboard/")
            await page.wait_for_selector("tr[data-backend] polyline")
            await page.wait_for_timeout(2500)
            await page.screenshot(path=out, full_page=True)
        print("=== corral status")
        print(render_text(await asyncio.to_thread(fetch, cp, None, window="5m")))
        result = await grpcurl(
            "-plaintext",
            "-d",
            '{"window": "TRAFFIC_WINDOW_1M", "group_by": "TRAFFIC_GROUP_BACKEND"}',
            cp,
            "corral.v1.AdminService/GetTraffic",
        )
        print("=== grpcurl GetTraffic")
        print(result.stdout)
        stop.set()
        for task in (*loaders, *edges):
            task.cancel()
        await asyncio.gather(*loaders, *edges, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
