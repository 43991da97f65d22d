"""Plans kept across requests: windows that end, policy changes, teams, the headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from corral.config import LimitConfig, LimitsConfig
from edge.gateway.call import CALL, Call
from edge.gateway.limits import Limiter, Limits, LocalCounters, Refused, Subject
from edge.gateway.limits.gate import Gate, limit_headers
from edge.gateway.limits.plan import Plan
from edge.gateway.prices import PriceTable
from tests.limits.drive import Clock

CHAT = {"model": "m", "messages": [], "max_tokens": 16}


@pytest.fixture
async def limiter() -> AsyncIterator[Limiter]:
    clock = Clock(now=1_800_000_000.0)  # a window boundary (a multiple of 60 s)
    limiter = Limiter(LocalCounters(clock=clock), clock=clock)
    yield limiter
    await limiter.close()


def _call(key: str, team: str = "default") -> Call:
    return Call(key, key, 0.0, 0.0, "chat", key_id=key, team=team, model="m")


async def _admit(gate: Gate, request: web.Request, call: Call) -> None:
    request[CALL] = call  # where the headers hook finds the ticket
    waiting = gate.admit(request, call, CHAT, 40)
    if waiting is not None:
        await waiting


async def _admitted(limiter: Limiter, plan: Plan, tokens: int, tries: int) -> int:
    """Requests of `tokens` admitted until the first refusal (at most `tries`)."""
    for count in range(tries):
        try:
            await limiter.admit(plan, tokens=tokens)
        except Refused:
            return count
    return tries


async def test_a_kept_plan_admits_the_limit_in_every_window(limiter: Limiter) -> None:
    """One plan, four windows: each admits exactly the rpm limit, from its own buckets."""
    assert isinstance(limiter.clock, Clock)
    plan = Plan([Subject("key", "k", Limits(rpm=10, tpm=100_000))])
    seen = []
    for _ in range(4):
        assert await _admitted(limiter, plan, 50, 30) == 10
        seen.append(plan.buckets)
        limiter.clock.now += 60
    assert len({id(b) for buckets in seen for b in buckets}) == 8  # new buckets per window


async def test_a_reservation_of_an_ended_window_is_not_given_to_the_next(
    limiter: Limiter,
) -> None:
    """A reservation settled after its window ended gives nothing back: the next admits its tpm."""
    assert isinstance(limiter.clock, Clock)
    plan = Plan([Subject("key", "k", Limits(tpm=1000))])
    old = await limiter.admit(plan, tokens=500)
    limiter.clock.now += 60
    await limiter.admit(plan, tokens=500)
    limiter.settle(old, tokens=0)
    assert all(b.retired for b in old.buckets)
    assert await _admitted(limiter, plan, 500, 5) == 1


async def test_policy_changes_and_team_moves_reach_kept_plans(limiter: Limiter) -> None:
    """The gate's plan for a key follows apply() and the key's team, as the headers show."""
    config = LimitsConfig(keys=(LimitConfig(name="k1", rpm=50, tpm=9000),))
    gate = Gate(config, limiter, lambda: PriceTable({}))

    async def limit_shown(call: Call) -> str:
        request = make_mocked_request("POST", "/v1/chat/completions")
        await _admit(gate, request, call)
        response = web.Response()
        await limit_headers(request, response)
        gate.settle(call)
        return response.headers["x-ratelimit-limit-requests"]

    assert await limit_shown(_call("k1")) == "50"
    gate.apply({"k1": Limits(rpm=20)}, {"research": Limits(rpm=7, budget=None)})
    assert await limit_shown(_call("k1")) == "20"
    moved = _call("k1", team="research")
    assert await limit_shown(moved) == "20"  # the key's counter first, then its team's
    assert [s.kind for s in gate.plan(make_mocked_request("GET", "/"), moved).subjects] == [
        "key",
        "team",
    ]


async def test_headers_replace_the_upstream_ones(limiter: Limiter) -> None:
    """An answer relayed with the backend's own x-ratelimit-* headers carries only ours."""
    config = LimitsConfig(default_key=LimitConfig(rpm=30, tpm=6000))
    gate = Gate(config, limiter, lambda: PriceTable({}))
    request = make_mocked_request("POST", "/v1/chat/completions")
    await _admit(gate, request, _call("k2"))
    response = web.Response(headers={"x-ratelimit-limit-requests": "1", "X-Other": "kept"})
    await limit_headers(request, response)
    assert response.headers.getall("x-ratelimit-limit-requests") == ["30"]
    assert response.headers["x-ratelimit-remaining-requests"] == "29"
    assert response.headers["x-ratelimit-limit-tokens"] == "6000"
    assert response.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert response.headers["X-Other"] == "kept"


async def test_admission_awaits_only_when_a_lease_is_short(limiter: Limiter) -> None:
    """The first request waits for a lease; the next ones are admitted by a plain call."""
    config = LimitsConfig(default_key=LimitConfig(rpm=100, tpm=100_000))
    gate = Gate(config, limiter, lambda: PriceTable({}))
    first = make_mocked_request("POST", "/v1/chat/completions")
    first_call = _call("k3")
    waiting = gate.admit(first, first_call, CHAT, 40)
    assert waiting is not None
    await waiting
    assert first_call.ticket is not None
    for _ in range(3):
        request = make_mocked_request("POST", "/v1/chat/completions")
        call = request[CALL] = _call("k3")
        assert gate.admit(request, call, CHAT, 40) is None
        assert call.limit == "allowed"
        response = web.Response()
        await limit_headers(request, response)
        gate.settle(call)
        assert int(response.headers["x-ratelimit-remaining-requests"]) < 100


def test_native_requests_reserve_their_own_output_caps(limiter: Limiter) -> None:
    """Native generations reserve their own caps; reads, details and embeddings their prompt."""
    gate = Gate(LimitsConfig(completion_cap=2048), limiter, lambda: PriceTable({}))

    def reserved(prefix: str, method: str, path: str, body: dict[str, Any]) -> int:
        call = Call("id", "id", 0.0, 0.0, prefix)
        return gate.reserve(call, body, 10, make_mocked_request(method, path))

    assert reserved("ollama", "GET", "/ollama/api/version", {}) == 10
    assert reserved("ollama", "POST", "/ollama/api/show", {"model": "m"}) == 10
    assert reserved("ollama", "POST", "/ollama/api/embed", {"model": "m", "input": "x"}) == 10
    assert reserved("vllm", "POST", "/vllm/v1/embeddings", {"model": "m", "input": "x"}) == 10
    assert reserved("vllm", "POST", "/vllm/tokenize", {"prompt": "x"}) == 10
    generate = {"model": "m", "prompt": "x", "options": {"num_predict": 64}}
    assert reserved("ollama", "POST", "/ollama/api/generate", generate) == 74
    assert reserved("ollama", "POST", "/ollama/api/chat", {"model": "m"}) == 2058
    unbounded = {"options": {"num_predict": -1}}
    assert reserved("ollama", "POST", "/ollama/api/chat", unbounded) == 2058
    assert reserved("llamacpp", "POST", "/llamacpp/completion", {"n_predict": 5}) == 15
    sglang = {"text": "x", "sampling_params": {"max_new_tokens": 7}}
    assert reserved("sglang", "POST", "/sglang/generate", sglang) == 17
    assert reserved("tgi", "POST", "/tgi/generate", {"parameters": {"max_new_tokens": 3}}) == 13
    assert reserved("vllm", "POST", "/vllm/v1/chat/completions", {"max_tokens": 9}) == 19
    openai = make_mocked_request("POST", "/v1/chat/completions")
    assert gate.reserve(_call("k"), {"model": "m"}, 10, openai) == 2058
