"""Every bad request gets the right status and OpenAI's error shape, never a traceback."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from corral.config import Secret
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually

MODEL = "m"
CHAT = "/v1/chat/completions"
GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def assert_error_shape(body: Any, code: str | None = None, param: str | None = None) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert "param" in error and "code" in error
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


async def post(
    http: aiohttp.ClientSession, running: RunningEdge, path: str, data: bytes, **kw: Any
) -> tuple[int, Any, dict[str, str]]:
    async with http.post(running.url + path, data=data, **kw) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


@pytest.fixture
async def fake() -> Any:
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (f,):
        yield f


@pytest.fixture
async def running(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> RunningEdge:
    snapshots.publish(
        snapshot(
            1,
            [
                from_fake(fake),
                backend("down", "http://127.0.0.1:9", ["only-down"], health=4),
            ],
        )
    )
    edge = await start_edge(snapshots, max_body_bytes=4096)
    await edge.wait_version(1)
    return edge


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, b"{not json", None),
        (CHAT, b"", None),
        (CHAT, b"\xff\xfe{}", None),
        (CHAT, b"[1, 2]", None),
        (CHAT, b'"a string"', None),
        (CHAT, b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (CHAT, b'{"model": 7, "messages": []}', "model"),
        (CHAT, b'{"model": "", "messages": [{"role": "user"}]}', "model"),
        (CHAT, b'{"model": "m\\u0000", "messages": [{"role": "user"}]}', "model"),
        # A second spelling a Go server (Ollama) would read instead of the `model` checked.
        (CHAT, b'{"model": "m", "MODEL": "other", "messages": [{"role": "user"}]}', "MODEL"),
        ("/v1/embeddings", b'{"model": "m", "Model": "other", "input": "x"}', "Model"),
        (CHAT, b'{"model": "m"}', "messages"),
        (CHAT, b'{"model": "m", "messages": "hello"}', "messages"),
        (CHAT, b'{"model": "m", "messages": []}', "messages"),
        (CHAT, b'{"model": "m", "messages": [42]}', "messages[0]"),
        (CHAT, b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
        (CHAT, b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (CHAT, b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": 1.5}', "max_tokens"),
        (
            CHAT,
            b'{"model": "m", "messages": [{"role": "user"}], "temperature": "hot"}',
            "temperature",
        ),
        (CHAT, b'{"model": "m", "messages": [{"role": "user"}], "n": true}', "n"),
        ("/v1/completions", b'{"model": "m"}', "prompt"),
        ("/v1/completions", b'{"model": "m", "prompt": 5}', "prompt"),
        ("/v1/embeddings", b'{"model": "m"}', "input"),
        ("/v1/embeddings", b'{"model": "m", "input": {"a": 1}}', "input"),
    ],
)
async def test_malformed_bodies_are_400(
    http: aiohttp.ClientSession,
    running: RunningEdge,
    fake: FakeServer,
    path: str,
    body: bytes,
    param: str | None,
) -> None:
    """Malformed JSON, wrong types and missing fields are 400s that never reach a backend."""
    status, data, _ = await post(
        http, running, path, body, headers={"Content-Type": "application/json"}
    )
    assert status == 400, data
    assert_error_shape(data, param=param)
    assert data["error"]["type"] == "invalid_request_error"
    assert fake.requests_to(path) == []


async def test_oversized_bodies_are_413(http: aiohttp.ClientSession, running: RunningEdge) -> None:
    """A Content-Length over the limit and a chunked body over it are both 413."""
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 8000 + b'"}]}'
    status, data, _ = await post(http, running, CHAT, big)
    assert status == 413
    assert_error_shape(data, code="request_too_large")

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    status, data, _ = await post(http, running, CHAT, chunks())
    assert status == 413
    assert_error_shape(data)


async def test_unknown_paths_and_methods(http: aiohttp.ClientSession, running: RunningEdge) -> None:
    """Unknown paths are JSON 404s, wrong methods JSON 405s with Allow."""
    async with http.get(running.url + "/v1/nothing-here") as resp:
        assert resp.status == 404
        assert_error_shape(await resp.json(), code="unknown_path")
    async with http.get(running.url + CHAT) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert_error_shape(await resp.json(), code="method_not_allowed")
    async with http.delete(running.url + "/v1/models") as resp:
        assert resp.status == 405
        assert_error_shape(await resp.json())


async def test_unknown_model_is_404(running: RunningEdge) -> None:
    """An unknown model is OpenAI's 404 model_not_found, raised by the official client."""
    with pytest.raises(openai.NotFoundError) as info:
        await running.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_found"
    body: Any = info.value.body
    assert body["param"] == "model" and body["type"] == "invalid_request_error"


async def test_known_model_without_routable_backend_is_503(
    http: aiohttp.ClientSession, running: RunningEdge
) -> None:
    """A model only an unhealthy backend serves is a 503 with Retry-After."""
    body = b'{"model": "only-down", "messages": [{"role": "user", "content": "x"}]}'
    status, data, headers = await post(http, running, CHAT, body)
    assert status == 503
    assert headers["Retry-After"]
    assert_error_shape(data, code="no_backend_available")


async def test_api_keys(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """With API keys configured, a missing or wrong key is 401; Bearer and x-api-key work."""
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    running = await start_edge(snapshots, api_keys=(Secret("key-one"), Secret("key-two")))
    await running.wait_version(1)
    payload = orjson.dumps(GOOD_CHAT)
    status, data, _ = await post(http, running, CHAT, payload)
    assert status == 401
    assert_error_shape(data, code="missing_api_key")
    status, data, _ = await post(
        http, running, CHAT, payload, headers={"Authorization": "Bearer key-three"}
    )
    assert status == 401
    assert_error_shape(data, code="invalid_api_key")
    async with http.get(running.url + "/v1/models") as resp:
        assert resp.status == 401
    status, _, _ = await post(
        http, running, CHAT, payload, headers={"Authorization": "Bearer key-two"}
    )
    assert status == 200
    status, _, _ = await post(http, running, CHAT, payload, headers={"x-api-key": "key-one"})
    assert status == 200
    with pytest.raises(openai.AuthenticationError):
        await running.client(api_key="wrong").models.list()
    models = [m.id async for m in running.client(api_key="key-one").models.list()]
    assert models == [MODEL]
    async with http.get(running.url + "/healthz") as resp:
        assert resp.status == 200  # probes need no key


async def test_full_backends_queue_then_429(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """At max concurrency a request queues until a slot frees; past queue depth, 429 Retry-After."""
    snapshots.publish(snapshot(1, [from_fake(fake, max_concurrency=1)]))
    running = await start_edge(snapshots, queue_depth=1, queue_wait_seconds=30.0)
    await running.wait_version(1)
    payload = orjson.dumps(GOOD_CHAT)
    fake.hold()
    first = asyncio.create_task(post(http, running, CHAT, payload))
    await fake.wait_inflight(1)
    queued = asyncio.create_task(post(http, running, CHAT, payload))

    async def queued_one() -> bool:
        return "corral_edge_queued_requests 1.0" in await running.metrics()

    await eventually(queued_one)
    status, data, headers = await post(http, running, CHAT, payload)
    assert status == 429
    assert headers["Retry-After"]
    assert_error_shape(data, code="backends_busy")
    assert fake.inflight == 1  # the queued request did not go over the limit
    fake.release()
    assert (await first)[0] == 200
    assert (await queued)[0] == 200


async def test_queue_wait_is_bounded(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """A queued request that waits longer than queue_wait_seconds gets a 429."""
    snapshots.publish(snapshot(1, [from_fake(fake, max_concurrency=1)]))
    running = await start_edge(snapshots, queue_wait_seconds=0.2)
    await running.wait_version(1)
    payload = orjson.dumps(GOOD_CHAT)
    fake.hold()
    first = asyncio.create_task(post(http, running, CHAT, payload))
    await fake.wait_inflight(1)
    status, data, _ = await post(http, running, CHAT, payload)
    assert status == 429
    assert_error_shape(data, code="backends_busy")
    fake.release()
    assert (await first)[0] == 200


async def test_no_snapshot_yet(http: aiohttp.ClientSession, start_edge: StartEdge) -> None:
    """Before any snapshot, /readyz is 503 and requests are 503s with Retry-After."""
    running = await start_edge(None)
    async with http.get(running.url + "/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["ready"] is False
    status, data, headers = await post(
        http, running, CHAT, b'{"model":"m","messages":[{"role":"user"}]}'
    )
    assert status == 503
    assert headers["Retry-After"]
    assert_error_shape(data, code="no_snapshot")


async def test_unexpected_errors_are_json_500(
    http: aiohttp.ClientSession, running: RunningEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside the edge is a logged 500 in OpenAI's shape, never a traceback."""
    from edge.app import METRICS
    from edge.appstate import BALANCER

    class Broken(str):
        """A model name whose comparison fails."""

        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("a bug")

    # No route for the model, and looking it up among the known ones raises. (Not a patched
    # method: compiled classes, edge/native.py, call their own methods directly.)
    balancer = running.app[BALANCER]
    assert balancer.table is not None
    broken = replace(balancer.table, routes={}, known=frozenset({Broken(GOOD_CHAT["model"])}))
    monkeypatch.setattr(balancer, "table", broken)
    status, data, _ = await post(http, running, CHAT, orjson.dumps(GOOD_CHAT))
    assert status == 500
    assert_error_shape(data, code="internal_error")
    assert "a bug" not in data["error"]["message"]
    # Counted as the 500 it was (it was status "0", which no error count includes).
    registry = running.app[METRICS].registry
    labels = {"model": "-", "backend": "-", "status": "500"}  # no route: no model label

    async def counted() -> bool:
        return registry.value("corral_edge_requests_total", labels) == 1.0

    await eventually(counted)
    assert registry.value("corral_edge_requests_total", {**labels, "status": "0"}) is None
