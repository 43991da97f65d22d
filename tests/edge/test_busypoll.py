"""Busy polling (edge/busypoll.py): the loop polls without sleeping for a window after each read."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from corral.config import BUSY_POLL_MAX_US, ConfigError, EdgeConfig, load
from edge.busypoll import BusyPoll, busy_poll
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes

MODEL = "m"


class RecordingSelector(selectors.DefaultSelector):
    """The platform's selector, noting the timeout of every poll."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def select(self, timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)
        return super().select(timeout)


async def _until_still(poll: BusyPoll) -> None:
    async with asyncio.timeout(5):
        while poll.spinning:
            await asyncio.sleep(0)


def test_a_touched_loop_polls_without_sleeping_until_stopped() -> None:
    """While its window is open the loop polls with a zero timeout; stopped, it sleeps again."""
    selector = RecordingSelector()
    loop = asyncio.SelectorEventLoop(selector)

    async def scenario() -> None:
        poll = BusyPoll(3600.0, asyncio.get_running_loop())
        poll.touch()
        assert poll.spinning
        selector.timeouts.clear()
        await asyncio.sleep(0.02)  # a wait the loop would otherwise sleep through
        assert selector.timeouts and all(t == 0 for t in selector.timeouts)
        poll.stop()
        await _until_still(poll)
        selector.timeouts.clear()
        await asyncio.sleep(0.02)
        assert any(t is None or t > 0 for t in selector.timeouts)

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


async def test_a_window_ends_by_itself_and_a_touch_opens_it_again() -> None:
    """A window of 1 µs ends after the touch with no stop; the next touch polls again."""
    poll = busy_poll(1)
    assert poll is not None
    poll.touch()
    await _until_still(poll)
    poll.touch()
    assert poll.spinning
    await _until_still(poll)


def test_off_by_default_and_bounded() -> None:
    """0 (default) is off; a negative or over-bound window is a config error, file, env or code."""
    assert EdgeConfig().busy_poll_us == 0 and busy_poll(0) is None
    assert load(config_file=None, environ={"CORRAL_EDGE_BUSY_POLL_US": "200"}).edge.busy_poll_us
    for wrong in (-1, BUSY_POLL_MAX_US + 1):
        with pytest.raises(ConfigError, match="busy_poll_us must be between 0 and"):
            EdgeConfig(busy_poll_us=wrong)
        with pytest.raises(ConfigError, match="busy_poll_us"):
            load(config_file=None, environ={"CORRAL_EDGE_BUSY_POLL_US": str(wrong)})


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (f,):
        yield f


async def test_the_lane_and_the_fast_client_touch_on_every_read(
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    fake: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A busy-polling lane edge serves whole and streamed, polled on each read; stops with it."""
    touched: list[BusyPoll] = []
    original = BusyPoll.touch

    def counting(self: BusyPoll) -> None:
        touched.append(self)
        original(self)

    monkeypatch.setattr(BusyPoll, "touch", counting)
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    edge = await start_edge(snapshots, server="lane", busy_poll_us=BUSY_POLL_MAX_US)
    await edge.wait_version(1)
    url = f"{edge.url}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    # A connection of its own: one that served a GET was handed over to aiohttp.
    async with aiohttp.ClientSession() as http:
        before = len(touched)
        async with http.post(url, data=orjson.dumps(body)) as resp:
            assert resp.status == 200
            assert (await resp.json())["object"] == "chat.completion"
        assert len(touched) - before >= 2  # the request's read and the answer's
        async with http.post(url, data=orjson.dumps({**body, "stream": True})) as resp:
            assert resp.status == 200
            assert (await resp.read()).rstrip().endswith(b"data: [DONE]")
    poll = touched[-1]
    assert all(t is poll for t in touched)
    await edge.stop()
    await _until_still(poll)
