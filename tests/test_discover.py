"""`corral up` discovery: every server type on its usual port, and nothing that is not one."""

from __future__ import annotations

from aiohttp import web

from corral.embedded import USUAL_PORTS, discover
from tests.fakes import KINDS, FakeServer, running_fakes
from tests.support.net import free_port

# Each type's default port, from its own documentation.
DOCUMENTED = {
    "ollama": 11434,
    "lmstudio": 1234,
    "vllm": 8000,
    "llamacpp": 8080,
    "sglang": 30000,
    "litellm": 4000,
    "lmdeploy": 23333,
    "docker-model-runner": 12434,
    "lemonade": 13305,
    "vllm-mlx": 8000,
    "tgi": 8080,
    "nim": 8000,
    "triton": 9000,
}


def test_every_types_usual_port_is_scanned() -> None:
    """The scan covers the documented default port of every server type but the generic one."""
    assert set(DOCUMENTED) == set(KINDS) - {"openai"}
    assert set(DOCUMENTED.values()) <= set(USUAL_PORTS)


async def test_discovery_finds_every_type_and_skips_other_web_apps() -> None:
    """Each fake is found (models at root, /engines or /api); a 200-HTML-everywhere app is not."""
    fakes = [FakeServer(kind, ["m"]) for kind in KINDS]

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    other = web.Application()
    other.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(other)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with running_fakes(*fakes):
            found = await discover(ports=[f.port for f in fakes] + [port])
            assert found == [f.url for f in fakes]
    finally:
        await runner.cleanup()
