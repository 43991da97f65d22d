"""The dashboard's admin token: enforced on the page and its data, never in a URL."""

from __future__ import annotations

import dataclasses

import aiohttp
from aiohttp import web

from controlplane.dashboard.web import COOKIE, Dashboard
from corral.config import Secret
from tests.controlplane.harness import config as cp_config
from tests.controlplane.harness import running
from tests.support.net import free_port

TOKEN = "s3cret-admin-token"


async def test_token_is_enforced_on_page_and_data() -> None:
    """No cookie or bearer: 401 data and a login form; the right token: data; wrong: 401."""
    address = f"127.0.0.1:{free_port()}"
    cfg = dataclasses.replace(cp_config(), metrics_listen=address, admin_token=Secret(TOKEN))
    base = f"http://{address}/dashboard"
    # unsafe: the jar keeps cookies from IP addresses (127.0.0.1), as browsers do.
    jar = aiohttp.CookieJar(unsafe=True)
    async with running(cfg), aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(f"{base}/api/state") as resp:
            assert resp.status == 401
            assert "error" in await resp.json()
        async with http.get(f"{base}/api/state", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(
            f"{base}/api/state", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            assert resp.status == 200
            doc = await resp.json()
            assert doc["replica"] and "backends" in doc
            assert TOKEN not in await resp.text()
        async with http.get(f"{base}/") as resp:
            page = await resp.text()
            assert resp.status == 200 and 'name="token"' in page and "backends" not in page
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        async with http.post(f"{base}/login", data={"token": "nope"}) as resp:
            assert resp.status == 401
            assert COOKIE not in resp.cookies
        async with http.post(f"{base}/login", data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 303
            morsel = resp.cookies[COOKIE]
            assert morsel.value and TOKEN not in morsel.value
            assert morsel["httponly"] and morsel["samesite"] == "Strict"
            assert morsel["path"] == "/dashboard/"
            assert TOKEN not in resp.headers["Location"]
        # The session is a cookie now (the jar kept it).
        async with http.get(f"{base}/api/state") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/") as resp:
            assert 'id="backends"' in await resp.text()
        async with http.post(f"{base}/logout", allow_redirects=False) as resp:
            assert resp.status == 303
        http.cookie_jar.clear()
        async with http.get(f"{base}/api/state") as resp:
            assert resp.status == 401
        # A forged cookie does not pass.
        async with http.get(f"{base}/api/state", cookies={COOKIE: "0" * 64}) as resp:
            assert resp.status == 401


async def test_without_a_token_only_loopback_is_served() -> None:
    """No admin token: a dashboard bound beyond loopback refuses everything (403)."""
    for bind, expected in (("0.0.0.0", 403), ("10.0.0.5", 403), ("127.0.0.1", 503)):
        dashboard = Dashboard(None, bind)  # not attached to a replica: 503 when allowed
        app = web.Application()
        dashboard.mount(app)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/dashboard/api/state") as resp:
                    assert resp.status == expected, bind
                async with http.get(f"http://127.0.0.1:{port}/dashboard/") as resp:
                    assert resp.status == (403 if expected == 403 else 200), bind
        finally:
            await runner.cleanup()
