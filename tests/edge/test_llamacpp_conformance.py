"""The llama.cpp fake against a real llama-server: the agent's detection and probes, and the
edge's chat, stream and usage paths, must see the same thing from both."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from agent.detect import detect
from agent.http import BackendClient
from agent.metrics import AgentMetrics
from agent.servers import PROBES
from corral.v1 import types_pb2
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, snapshot
from tests.fakes import FakeModel, FakeServer
from tests.support.llamacpp import ALIAS, PARALLEL, LlamaServer, llama_servers

# The /metrics series the agent reads for load (llamacpp:kv_cache_usage_ratio, which it also
# asks for, is gone from current servers: neither side may report a KV-cache figure).
LOAD_METRICS = {"llamacpp:requests_processing", "llamacpp:requests_deferred"}
PROBE_PATHS = ("/health", "/v1/models", "/props", "/slots", "/metrics")


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with llama_servers(1, tmp_path_factory.mktemp("llama")) as servers:
        yield servers[0]


@pytest.fixture
async def urls(real_server: LlamaServer) -> AsyncIterator[dict[str, str]]:
    """The real server and a llama.cpp fake configured like it (one model, 2 slots)."""
    model = FakeModel(id=ALIAS, context_length=16384)
    async with FakeServer(
        kind="llamacpp", models=[model], name="fake", total_slots=PARALLEL, anthropic_native=True
    ) as fake:
        yield {"real": real_server.url, "fake": fake.url}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def shape(value: Any) -> Any:
    """A value's structure: keys and JSON types, not contents (lists by their first item)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def keys_missing(fake: Any, real: Any, where: str = "") -> list[str]:
    """Paths the fake answers that the real server does not (a fake must not invent fields)."""
    if isinstance(fake, dict) and isinstance(real, dict):
        out = []
        for key, value in fake.items():
            if key not in real:
                out.append(f"{where}.{key}")
            else:
                out += keys_missing(value, real[key], f"{where}.{key}")
        return out
    if isinstance(fake, list) and isinstance(real, list) and fake and real:
        return keys_missing(fake[0], real[0], where + "[]")
    return []


async def test_detection_and_probes_agree(urls: dict[str, str]) -> None:
    """Detected as llama.cpp; healthy; same model, context, slots, load and capabilities."""
    seen = {}
    async with aiohttp.ClientSession() as session:
        for side, url in urls.items():
            http = BackendClient(url, session, timeout=5.0, api_key=None, metrics=AgentMetrics())
            found = await detect(http)
            assert found.server_type == "llamacpp", (side, found)
            probe = PROBES["llamacpp"](http, slow_seconds=2.0)
            obs = await probe.probe()
            assert obs.health == types_pb2.HEALTH_STATE_HEALTHY, (side, obs.reason)
            assert obs.models is not None and obs.load is not None
            (model,) = obs.models
            seen[side] = (
                model.id,
                model.context_length,
                model.metadata["total_slots"],
                (obs.load.running, obs.load.waiting, obs.load.HasField("kv_cache_usage")),
                sorted(probe.capabilities),
                bool(probe.server_version),
            )
    assert seen["fake"] == seen["real"]
    assert seen["real"][:4] == (ALIAS, 16384, str(PARALLEL), (0, 0, False))


async def test_probe_endpoints_agree(urls: dict[str, str], client: aiohttp.ClientSession) -> None:
    """Every endpoint the agent probes answers alike; the fake has no field the server lacks."""
    answers: dict[str, dict[str, Any]] = {}
    for side, url in urls.items():
        for path in PROBE_PATHS:
            async with client.get(url + path) as resp:
                text = await resp.text()
                answers.setdefault(side, {})[path] = (resp.status, text)
    for path in PROBE_PATHS:
        real_status, real_text = answers["real"][path]
        fake_status, fake_text = answers["fake"][path]
        assert (path, fake_status) == (path, real_status)
        if path == "/metrics":
            real_names = metric_names(real_text)
            fake_names = metric_names(fake_text)
            assert fake_names <= real_names, fake_names - real_names
            assert real_names >= LOAD_METRICS and fake_names >= LOAD_METRICS
            assert "llamacpp:kv_cache_usage_ratio" not in real_names | fake_names
        else:
            real, fake = orjson.loads(real_text), orjson.loads(fake_text)
            assert keys_missing(fake, real, path) == []
    slots = orjson.loads(answers["real"]["/slots"][1])
    assert shape(orjson.loads(answers["fake"]["/slots"][1])) == shape(slots)
    assert len(slots) == PARALLEL


def metric_names(text: str) -> set[str]:
    return {line.split()[0].split("{")[0] for line in text.splitlines() if line[:1].isalpha()}


@pytest.fixture
async def edges(
    urls: dict[str, str], start_edge: StartEdge
) -> AsyncIterator[dict[str, RunningEdge]]:
    """One edge per side, each routing the model to that side only."""
    out = {}
    servers = []
    try:
        for side, url in urls.items():
            server = SnapshotServer()
            servers.append(server)
            await server.start()
            llamacpp = types_pb2.BACKEND_TYPE_LLAMACPP
            server.publish(snapshot(1, [backend(side, url, [ALIAS], kind=llamacpp)]))
            out[side] = await start_edge(server)
            await out[side].wait_version(1)
        yield out
    finally:
        for server in servers:
            await server.stop()


def body(stream: bool, include_usage: bool | None, content: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": ALIAS,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content},
        ],
        "max_tokens": 6,
        "temperature": 0,
    }
    if stream:
        out["stream"] = True
    if include_usage is not None:
        out["stream_options"] = {"include_usage": include_usage}
    return out


async def events(resp: aiohttp.ClientResponse) -> list[Any]:
    """The SSE data payloads of a response, parsed ([DONE] kept as the string)."""
    out = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return out


def stream_shape(items: list[Any]) -> list[Any]:
    """A stream's event shapes, runs of identical ones collapsed (text length varies)."""
    return [key for key, _ in itertools.groupby(shape(e) if e != "[DONE]" else e for e in items)]


async def test_chat_stream_and_usage_through_the_edge_agree(
    edges: dict[str, RunningEdge], client: aiohttp.ClientSession
) -> None:
    """Chat, streams with or without usage, cached tokens look alike via an edge, one connection."""
    seen: dict[str, list[Any]] = {}
    for side, running in edges.items():
        url = f"{running.url}/v1/chat/completions"
        got: list[Any] = []
        for case, (stream, include_usage) in enumerate(
            [(False, None), (True, None), (True, True), (True, False), (False, None)]
        ):
            request = body(stream, include_usage, f"a question, number {case}")
            async with client.post(url, json=request) as resp:
                assert resp.status == 200, (side, case, await resp.text())
                assert resp.headers["X-Corral-Route"] != "retry"
                if stream:
                    assert resp.content_type == "text/event-stream"
                    items = await events(resp)
                    assert items[-1] == "[DONE]"
                    got.append(stream_shape(items))
                    usage_chunks = [e for e in items[:-1] if e.get("usage")]
                    assert bool(usage_chunks) == bool(include_usage), (side, case)
                else:
                    answer = await resp.json()
                    got.append(shape(answer))
        # The same conversation again: its prompt is served from the cache the second time.
        cached = []
        for _ in range(2):
            async with client.post(url, json=body(False, None, "the same question")) as resp:
                answer = await resp.json()
                cached.append(answer["usage"]["prompt_tokens_details"]["cached_tokens"])
                assert answer["timings"]["cache_n"] == cached[-1]
        assert cached[1] > cached[0] and cached[1] >= answer["usage"]["prompt_tokens"] // 2
        seen[side] = got
    for case, (real, fake) in enumerate(zip(seen["real"], seen["fake"], strict=True)):
        assert fake == real, f"case {case} differs"


async def test_native_completion_usage_is_the_server_s_own_count(
    real_server: LlamaServer, start_edge: StartEdge, client: aiohttp.ClientSession
) -> None:
    """/llamacpp/completion, whole and streamed: the rows hold its tokens_* counts, exactly."""
    from corral.config import UsageConfig
    from tests.edge.test_usage_sdk import rows

    server = SnapshotServer()
    await server.start()
    try:
        llamacpp = types_pb2.BACKEND_TYPE_LLAMACPP
        server.publish(snapshot(1, [backend("real", real_server.url, [ALIAS], kind=llamacpp)]))
        running = await start_edge(server, usage=UsageConfig(flush_interval_seconds=0.05))
        await running.wait_version(1)
        url = f"{running.url}/llamacpp/completion"
        ask = {"prompt": "Once upon a time", "n_predict": 5, "temperature": 0}
        async with client.post(url, json=ask) as resp:
            whole = await resp.json()
        async with client.post(url, json={**ask, "stream": True}) as resp:
            assert resp.content_type == "text/event-stream"
            last = (await events(resp))[-1]
        async with client.post(f"{running.url}/llamacpp/tokenize", json={"content": "hi"}) as r:
            assert r.status == 200
        found = await rows(running, 3)
    finally:
        await server.stop()
    assert last["stop"] is True and whole["tokens_predicted"] > 0
    for row, answer, streamed in [(found[0], whole, 0), (found[1], last, 1)]:
        counts = (answer["tokens_evaluated"], answer["tokens_predicted"])
        assert (row["prompt_tokens"], row["completion_tokens"]) == counts
        assert (row["estimated"], row["stream"]) == (0, streamed)
    assert found[2]["completion_tokens"] == 0
