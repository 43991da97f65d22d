"""OTLP spans from the edge: request, attempt and backend spans continuing the caller's trace."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from aiohttp import web

from corral.config import EdgeObservabilityConfig
from tests.controlplane.harness import config as cp_config
from tests.controlplane.harness import running
from tests.edge.conftest import StartEdge, running_agents
from tests.fakes import FakeServer, running_fakes
from tests.observability.waits import serving
from tests.support.net import eventually, free_port

MODEL = "m"


class Collector:
    """A tiny OTLP/HTTP JSON receiver: keeps every span posted to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.port = free_port()
        self.arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        body = await request.json()
        for resource_spans in body["resourceSpans"]:
            self.resources.append(resource_spans["resource"])
            for scope in resource_spans["scopeSpans"]:
                self.spans.extend(scope["spans"])
        self.arrived.set()
        return web.json_response({})

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["traceId"] == trace_id]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in span["attributes"]:
        (value,) = item["value"].values()
        out[item["key"]] = value
    return out


async def test_spans_continue_the_callers_trace(start_edge: StartEdge) -> None:
    """A retried request: SERVER span under the caller's parent, attempt and CLIENT per backend."""
    # Spans carry GenAI attributes and token usage.
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", collector.port).start()
    try:
        async with (
            running(cp_config()) as cp,
            running_fakes(
                FakeServer("vllm", [MODEL], "busy-a"), FakeServer("vllm", [MODEL], "ok-b")
            ) as fakes,
            running_agents(cp, fakes),
        ):
            fakes[0].mode = "overloaded"  # 429 on inference, healthy to its agent
            edge = await start_edge(
                None,
                controlplane=(cp,),
                edge_id="edge-t",
                balancing="round-robin",
                eject_after_failures=10**6,
                observability=EdgeObservabilityConfig(
                    otlp_endpoint=f"http://127.0.0.1:{collector.port}/v1/traces",
                    otlp_service_name="corral-edge-test",
                ),
            )
            await eventually(lambda: serving(edge, MODEL, 2), within=30)
            parent_span = os.urandom(8).hex()
            retried: str | None = None
            async with aiohttp.ClientSession() as http:
                for _ in range(6):
                    trace_id = os.urandom(16).hex()
                    async with http.post(
                        f"{edge.url}/v1/chat/completions",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                        headers={"traceparent": f"00-{trace_id}-{parent_span}-01"},
                    ) as resp:
                        assert resp.status == 200
                        if resp.headers["x-corral-route"] == "retry":
                            retried = trace_id
                            break
                assert retried is not None
                # An unsampled caller's trace is not exported.
                unsampled = os.urandom(16).hex()
                async with http.post(
                    f"{edge.url}/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                    headers={"traceparent": f"00-{unsampled}-{parent_span}-00"},
                ) as resp:
                    assert resp.status == 200

            spans = await eventually(
                lambda: len(collector.trace(retried)) >= 5 and collector.trace(retried)
            )
            assert collector.trace(unsampled) == []
            by_kind: dict[int, list[dict[str, Any]]] = {}
            for span in spans:
                by_kind.setdefault(span["kind"], []).append(span)
            [server] = by_kind[2]
            assert server["parentSpanId"] == parent_span
            assert server["name"] == f"chat {MODEL}"
            server_attrs = attrs(server)
            assert server_attrs["gen_ai.request.model"] == MODEL
            assert server_attrs["gen_ai.operation.name"] == "chat"
            assert server_attrs["http.response.status_code"] == "200"
            assert int(server_attrs["gen_ai.usage.input_tokens"]) > 0
            assert int(server_attrs["gen_ai.usage.output_tokens"]) > 0
            assert server_attrs["corral.backend"] == "ok-b"
            attempts = sorted(by_kind[1], key=lambda s: int(s["startTimeUnixNano"]))
            assert [attrs(a)["corral.backend"] for a in attempts] == ["busy-a", "ok-b"]
            assert all(a["parentSpanId"] == server["spanId"] for a in attempts)
            assert attempts[0]["status"]["code"] == 2 and "status" not in attempts[1]
            assert attrs(attempts[0])["error.type"] == "status_429"
            clients = by_kind[3]
            assert sorted(c["parentSpanId"] for c in clients) == sorted(
                a["spanId"] for a in attempts
            )
            for client in clients:
                assert attrs(client)["server.address"] == "127.0.0.1"
                assert int(server["startTimeUnixNano"]) <= int(client["startTimeUnixNano"])
                assert int(client["endTimeUnixNano"]) <= int(server["endTimeUnixNano"]) + 10**7
            service = {a["key"]: a["value"] for a in collector.resources[0]["attributes"]}
            assert service["service.name"] == {"stringValue": "corral-edge-test"}
    finally:
        await runner.cleanup()
