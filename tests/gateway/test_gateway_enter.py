"""Gateway.enter is a plain call unless something must be waited for."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Coroutine

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from corral.config import EdgeConfig
from corral.config_gateway import CacheConfig
from edge.errors import ApiError
from edge.exchange import OpenAIExchange
from edge.exposition import Registry
from edge.gateway.cache.store import Entry
from edge.gateway.call import CACHE_HIT, CACHE_MISS, Call
from edge.gateway.lifetimes import running
from edge.gateway.pipeline import Entered
from edge.gateway.tap import Tap
from edge.table import ModelRoute

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
ANSWER = b'{"object":"chat.completion","choices":[]}'


def _route() -> ModelRoute:
    raise ApiError(404, "no route now")  # a plain model: no alias targets in the key


async def test_a_memory_only_cache_answers_without_an_await() -> None:
    """A miss leads and a stored answer hits without an await; an identical request waits."""
    config = dataclasses.replace(EdgeConfig(), cache=CacheConfig(ttl_seconds=60))
    async with (
        aiohttp.ClientSession() as session,
        running(config, Registry(), lambda: session) as gateway,
    ):
        assert gateway.cache is not None

        def enter() -> tuple[Call, Entered]:
            request = make_mocked_request("POST", "/v1/chat/completions")
            exchange = OpenAIExchange("/v1/chat/completions", BODY, {"model": "m"}, False)
            call = Call("c", "c", 0.0, 0.0, "chat", model="m")
            return call, gateway.enter(request, call, exchange, _route, "chat")

        call, first = enter()
        # Its answer comes whole: the exchange runs as it is, its answer stored at leave.
        looked = call.storing
        assert isinstance(first, OpenAIExchange) and not isinstance(first, Tap)
        assert looked is not None and looked.leader and call.cache == CACHE_MISS
        _, second = enter()  # the first is still upstream: this one waits for it
        assert isinstance(second, Coroutine)
        second.close()  # a coroutine, not awaited here
        gateway.cache.finish(looked.key, None)
        gateway.cache.put(looked.key, Entry(ANSWER, time.time(), 1, 1), 60)
        stored = gateway.cache.metrics.hot.stored
        call, third = enter()
        assert isinstance(third, web.Response) and call.cache == CACHE_HIT
        assert gateway.cache.metrics.hot.stored == stored  # a hit is not stored again


async def test_the_policy_is_asked_only_while_it_sets_something() -> None:
    """A team's policy TTL and PII action apply once set, and the config's again once gone."""
    from corral.config_gateway import GuardConfig
    from corral.v1 import content_pb2, gateway_pb2

    config = dataclasses.replace(
        EdgeConfig(), cache=CacheConfig(ttl_seconds=60), guard=GuardConfig(pii="log")
    )
    async with (
        aiohttp.ClientSession() as session,
        running(config, Registry(), lambda: session) as gateway,
    ):
        cache, guard = gateway.cache, gateway.guard
        assert cache is not None and guard is not None
        assert cache.ttl("t", "", "m") == 60 and guard.settings("t", "", "m").pii == "log"
        content = content_pb2.ContentPolicy(cache_ttl_seconds=5, pii="redact")
        team = gateway_pb2.Team(name="t", content=content)
        gateway.content.apply(gateway_pb2.Policy(teams=[team]))
        gateway.refresh()
        assert cache.fixed_ttl is None and cache.ttl("t", "", "m") == 5
        assert cache.ttl("other", "", "m") == 60
        assert guard.settings("t", "", "m").pii == "redact"
        gateway.content.apply(gateway_pb2.Policy())
        gateway.refresh()
        assert cache.fixed_ttl == 60 and cache.ttl("t", "", "m") == 60
        assert guard.settings("t", "", "m").pii == "log"


async def test_the_clean_pass_stands_for_inspect_now_only_when_it_decides() -> None:
    """Gateway.enter skips inspect_now for a clean body only if just the PII detectors could act."""
    # Not with a deny rule, a hook, rules, a policy, or PII off.
    from corral.config_gateway import (
        GuardConfig,
        GuardDenyConfig,
        GuardHookConfig,
        GuardRuleConfig,
    )
    from edge.gateway.guard.engine import Guard, Refused

    assert Guard(GuardConfig(pii="redact")).clean_pass is not None
    assert Guard(GuardConfig(pii="log")).clean_pass is not None
    hook = GuardHookConfig(python="tests.gateway.guard_hooks:names")
    for config in (
        GuardConfig(),
        GuardConfig(pii="redact", deny=(GuardDenyConfig("drop table"),)),
        GuardConfig(pii="redact", hooks=(hook,)),
        GuardConfig(pii="redact", rules=(GuardRuleConfig(team="t", pii="block"),)),
    ):
        assert Guard(config).clean_pass is None, config
    guard = Guard(GuardConfig(pii="redact"), policy=lambda team, key: None)
    assert guard.clean_pass is None  # the policy may set a team's action
    guard.consult_policy(False)
    assert guard.clean_pass is not None
    guard.consult_policy(True)
    assert guard.clean_pass is None

    config = dataclasses.replace(
        EdgeConfig(), guard=GuardConfig(pii="redact", deny=(GuardDenyConfig("hi"),))
    )
    async with (
        aiohttp.ClientSession() as session,
        running(config, Registry(), lambda: session) as gateway,
    ):
        request = make_mocked_request("POST", "/v1/chat/completions")
        exchange = OpenAIExchange("/v1/chat/completions", BODY, orjson.loads(BODY), False)
        call = Call("c", "c", 0.0, 0.0, "chat", model="m")
        with pytest.raises(Refused):  # a clean body, and still its deny rule refuses it
            gateway.enter(request, call, exchange, _route, "chat")


async def test_a_reader_gets_nothing_older_than_its_own_ttl() -> None:
    """An entry stored for an hour is a miss for a request whose TTL is shorter than its age."""
    from corral.config_gateway import CacheRuleConfig

    rules = (CacheRuleConfig(team="brief", ttl_seconds=5),)
    config = dataclasses.replace(EdgeConfig(), cache=CacheConfig(ttl_seconds=3600, rules=rules))
    async with (
        aiohttp.ClientSession() as session,
        running(config, Registry(), lambda: session) as gateway,
    ):
        cache = gateway.cache
        assert cache is not None

        def enter(team: str) -> tuple[Call, Entered]:
            request = make_mocked_request("POST", "/v1/chat/completions")
            exchange = OpenAIExchange("/v1/chat/completions", BODY, {"model": "m"}, False)
            call = Call("c", "c", 0.0, 0.0, "chat", model="m", team=team)
            return call, gateway.enter(request, call, exchange, _route, "chat")

        for team in ("brief", "patient"):
            call, _ = enter(team)
            looked = call.storing
            assert looked is not None and call.cache == CACHE_MISS
            cache.finish(looked.key, None)
            cache.put(looked.key, Entry(ANSWER, time.time() - 100, 1, 1), 3600)
            call, _ = enter(team)
            assert call.cache == (CACHE_MISS if team == "brief" else CACHE_HIT), team
            if call.storing is not None:
                cache.finish(call.storing.key, None)


async def test_repeated_cache_control_lines_are_one_list() -> None:
    """`Cache-Control: max-age=60` then `Cache-Control: no-store`: nothing is stored."""
    from multidict import CIMultiDict

    config = dataclasses.replace(EdgeConfig(), cache=CacheConfig(ttl_seconds=60))
    async with (
        aiohttp.ClientSession() as session,
        running(config, Registry(), lambda: session) as gateway,
    ):
        headers = CIMultiDict([("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")])
        request = make_mocked_request("POST", "/v1/chat/completions", headers=headers)
        exchange = OpenAIExchange("/v1/chat/completions", BODY, {"model": "m"}, False)
        call = Call("c", "c", 0.0, 0.0, "chat", model="m")
        gateway.enter(request, call, exchange, _route, "chat")
        assert call.cache == CACHE_MISS and call.storing is None


async def test_an_answer_from_a_fallback_is_not_stored() -> None:
    """A fallback model's answer is never kept as the answer of the model asked for."""
    from edge.providers.fallbacks import FALLBACK

    config = dataclasses.replace(EdgeConfig(), cache=CacheConfig(ttl_seconds=60))
    async with (
        aiohttp.ClientSession() as session,
        running(config, Registry(), lambda: session) as gateway,
    ):
        cache = gateway.cache
        assert cache is not None
        for route, kept in ((FALLBACK, False), ("primary", True)):
            request = make_mocked_request("POST", "/v1/chat/completions")
            exchange = OpenAIExchange("/v1/chat/completions", BODY, {"model": "m"}, False)
            call = Call("c", "c", 0.0, 0.0, "chat", model="m")
            gateway.enter(request, call, exchange, _route, "chat")
            looked = call.storing
            assert looked is not None
            call.route, call.status = route, 200
            gateway.leave(call, web.Response(body=ANSWER))
            assert cache.memory.holds(looked.key) is kept and looked.key not in cache.inflight
