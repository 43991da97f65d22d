"""`corral up`: control plane (in-memory store), one edge and an agent per backend, in one
process, for one machine. The components are the same code that runs distributed; only the
store differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import aiohttp

import controlplane
import edge
from agent.service import Agent
from controlplane.dashboard.web import Dashboard
from corral.config import AgentConfig, CorralConfig
from corral.demo import DEMO_MODEL, DemoBackend

log = logging.getLogger(__name__)

# The ports inference servers listen on by default (their own documentation's).
USUAL_PORTS = {
    11434: "Ollama",
    1234: "LM Studio",
    8000: "vLLM / NIM / vLLM-MLX",
    8080: "llama.cpp / TGI",
    30000: "SGLang",
    4000: "LiteLLM",
    23333: "LMDeploy",
    12434: "Docker Model Runner",
    13305: "Lemonade",
    9000: "Triton",
}
# Where a server's OpenAI model list answers: the root, or below it (Docker Model Runner's
# /engines, Lemonade's /api; the agent finds the base again when it detects the type).
_MODEL_LISTS = ("/v1/models", "/engines/v1/models", "/api/v1/models")
DEMO_BACKENDS = 2


async def _looks_like_inference_server(session: aiohttp.ClientSession, url: str) -> bool:
    """A cheap check that a port holds an inference server, not some other web app."""
    for path in _MODEL_LISTS:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, TypeError):
            async with session.get(f"{url}{path}") as resp:
                if resp.status == 200 and "data" in await resp.json(content_type=None):
                    return True
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(f"{url}/") as resp:
            if "Ollama is running" in await resp.text():
                return True
    return False


async def discover(
    host: str = "127.0.0.1", skip: Sequence[int] = (), ports: Iterable[int] = USUAL_PORTS
) -> list[str]:
    """Base URLs of inference servers answering on this machine's usual ports."""
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        candidates = [f"http://{host}:{port}" for port in ports if port not in skip]
        found = await asyncio.gather(
            *(_looks_like_inference_server(session, url) for url in candidates)
        )
    return [url for url, ok in zip(candidates, found, strict=True) if ok]


def _agent_name(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}-{parts.port or 80}".replace(".", "-")


async def _wait_for_models(edge_url: str, expected: int, within: float = 15.0) -> list[str]:
    """Ask the edge which models it serves until every backend is in, or time is up."""
    models: list[str] = []
    deadline = asyncio.get_running_loop().time() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{edge_url}/v1/models") as resp:
                    if resp.status == 200:
                        models = [m["id"] for m in (await resp.json())["data"]]
                        if expected == 0 or models:
                            return models
            await asyncio.sleep(0.2)  # startup only: agents need a probe round to report
    return models


def _problems(agents: dict[str, Agent]) -> dict[str, str]:
    """Why each backend that is not serving yet is not: from its agent's own state."""
    out: dict[str, str] = {}
    for name, one in agents.items():
        state = one.describe()
        cp = state["controlplane"]
        if state["health"] == "healthy":
            continue
        if one.server_type is None:
            why = f"not detected yet: {state['detection'] or 'no answer so far'}"
        elif not cp["session_id"]:
            why = f"not registered with the control plane: {cp['last_error'] or 'connecting'}"
        else:
            why = f"registered but {state['health']}: {state['reason']}"
        out[name] = why
    return out


def _banner(edge_url: str, cp_address: str, backends: dict[str, str], models: list[str]) -> str:
    lines = [
        "",
        "Corral is up.",
        f"  edge (OpenAI-compatible API): {edge_url}/v1",
        f"  control plane (gRPC):         {cp_address}",
        f"  dashboard:                    {edge_url}/dashboard/",
    ]
    if backends:
        lines.append("  backends:")
        lines += [f"    {name:<24} {url}" for name, url in backends.items()]
        lines.append(f"  models: {', '.join(models) if models else '(none reported yet)'}")
        model = DEMO_MODEL if DEMO_MODEL in models else (models[0] if models else "MODEL")
        body = f'{{"model":"{model}","messages":[{{"role":"user","content":"Hello, Corral!"}}]}}'
        lines += [
            "",
            "Try:",
            f"  curl -s {edge_url}/v1/chat/completions -H 'Content-Type: application/json' \\",
            f"    -d '{body}'",
        ]
    else:
        ports = ", ".join(f"{name} {port}" for port, name in USUAL_PORTS.items())
        lines += [
            "",
            f"No inference server answered on this machine's usual ports ({ports}).",
            "Start one, pass --backend URL, or try the demo: ./dev up --demo",
        ]
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)


async def serve(config: CorralConfig) -> None:
    """Run everything until cancelled."""
    up = config.up
    cp_config = dataclasses.replace(
        config.controlplane, store="memory", listen=up.controlplane_listen
    )
    edge_config = dataclasses.replace(
        config.edge, listen=up.listen, controlplane=(up.controlplane_listen,)
    )
    edge_port = int(up.listen.rsplit(":", 1)[1])
    cp_port = int(up.controlplane_listen.rsplit(":", 1)[1])

    demos = [DemoBackend(f"demo-{i + 1}", host=up.demo_listen_host) for i in range(DEMO_BACKENDS)]
    backends: dict[str, str] = {}
    try:
        if up.demo:
            for demo in demos:
                backends[demo.name] = await demo.start()
        urls = list(up.backends)
        if up.discover:
            urls += [u for u in await discover(skip=(edge_port, cp_port)) if u not in up.backends]
        for url in urls:
            backends[_agent_name(url)] = url

        async with asyncio.TaskGroup() as tasks:
            cp_ready = asyncio.Event()
            # The dashboard is served on the edge's address, by the control plane's code.
            dashboard = Dashboard(cp_config.admin_token, up.listen.rsplit(":", 1)[0])
            tasks.create_task(
                controlplane.serve(cp_config, ready=cp_ready, dashboard=dashboard),
                name="controlplane",
            )
            await cp_ready.wait()
            agents: dict[str, Agent] = {}
            for name, url in backends.items():
                agent_config: AgentConfig = dataclasses.replace(
                    config.agent,
                    controlplane=(up.controlplane_listen,),
                    backend=url,
                    name=name,
                    # One process holds every agent: keep their identities apart.
                    agent_id=f"{config.agent.agent_id or 'up'}/{name}",
                    type="openai" if name.startswith("demo-") else config.agent.type,
                    # Only agents serve their own HTTP; in one process they share ours.
                    metrics_listen=None,
                )
                agents[name] = Agent(agent_config)
                tasks.create_task(agents[name].run(), name=f"agent {name}")
            edge_ready = asyncio.Event()
            # The port opens once every backend is in the edge's table (or the timeout).
            tasks.create_task(
                edge.serve(
                    edge_config,
                    ready=edge_ready,
                    extra=dashboard.mount,
                    expect_backends=list(backends),
                    expect_within=up.register_timeout_seconds,
                ),
                name="edge",
            )
            await edge_ready.wait()
            edge_url = f"http://{up.listen}"
            models = await _wait_for_models(edge_url, expected=len(backends))
            for name, problem in _problems(agents).items():
                print(f"backend {name} ({backends[name]}): {problem}", flush=True)
            print(_banner(edge_url, up.controlplane_listen, backends, models), flush=True)
    finally:
        for demo in demos:
            await demo.close()
