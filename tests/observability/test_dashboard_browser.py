"""The dashboard in headless chromium: login, live health changes without a reload."""

from __future__ import annotations

import dataclasses

import aiohttp

from corral.config import EdgeObservabilityConfig, Secret
from tests.controlplane.harness import config as cp_config
from tests.controlplane.harness import running
from tests.edge.conftest import StartEdge, running_agents
from tests.fakes import FakeServer, running_fakes
from tests.observability.browser import ARTIFACTS, browser
from tests.observability.waits import serving
from tests.support.net import eventually, free_port

MODEL = "m"
TOKEN = "dashboard-admin-token-1234"


async def test_backend_down_and_back_seen_live(start_edge: StartEdge) -> None:
    """A backend going down then up shows in the page within seconds, no reload, no errors."""
    http_address = f"127.0.0.1:{free_port()}"
    cfg = dataclasses.replace(cp_config(), metrics_listen=http_address, admin_token=Secret(TOKEN))
    async with (
        running(cfg) as cp,
        running_fakes(
            FakeServer("vllm", [MODEL], "gpu-a"), FakeServer("vllm", [MODEL], "gpu-b")
        ) as fakes,
        running_agents(cp, fakes),
    ):
        edge = await start_edge(
            None,
            controlplane=(cp,),
            edge_id="edge-0",
            observability=EdgeObservabilityConfig(traffic_interval_seconds=0.3),
        )
        await eventually(lambda: serving(edge, MODEL, 2), within=30)
        async with aiohttp.ClientSession() as http:
            for i in range(30):
                async with http.post(
                    f"{edge.url}/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": str(i)}]},
                ) as resp:
                    assert resp.status == 200
        problems: list[str] = []
        async with browser() as chromium:
            page = await chromium.new_page(viewport={"width": 1500, "height": 1000})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            url = f"http://{http_address}/dashboard/"
            await page.goto(url)
            # The admin token is configured: a login form, no data.
            assert await page.locator("input[name=token]").count() == 1
            assert await page.locator("#backends").count() == 0
            await page.fill("input[name=token]", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_selector('tr[data-backend="gpu-b"] td[data-health="healthy"]')
            assert page.url == url  # the token never went into a URL
            # Traffic arrives from the edge's reports.
            await page.wait_for_function(
                "() => [...document.querySelectorAll('tr[data-backend] polyline')].length >= 2",
                timeout=15_000,
            )
            await page.evaluate("window.__sameDocument = true")

            fakes[1].mode = "error"  # its agent reports it down
            await page.wait_for_selector(
                'tr[data-backend="gpu-b"] td[data-health="unhealthy"]', timeout=10_000
            )
            await page.wait_for_selector("#timeline li[data-kind=health]", timeout=5_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(
                path=str(ARTIFACTS / "dashboard-backend-down.png"), full_page=True
            )

            fakes[1].mode = "ok"
            await page.wait_for_selector(
                'tr[data-backend="gpu-b"] td[data-health="healthy"]', timeout=10_000
            )
            assert await page.evaluate("window.__sameDocument === true")  # no reload
            timeline = await page.locator("#timeline").inner_text()
            assert "gpu-b" in timeline and "unhealthy" in timeline
            assert await page.locator('tr[data-edge="edge-0"]').count() == 1
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert problems == []
