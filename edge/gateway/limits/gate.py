"""The limits as the edge applies them: who a request counts against, what it reserves,
what it used; the headers and the refusals; and the edge's cleanup context.

Proxy.run calls `admit` once the request is authenticated and parsed (a plain call; it
awaits only when a lease is short), and `settle` when it is over (whatever happened);
responses get the x-ratelimit-* headers as they are prepared.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from aiohttp import web
from multidict import istr

from corral.config import ConfigError, LimitConfig, LimitsConfig
from corral.v1 import gateway_pb2, limits_pb2
from edge.client_request import ClientRequest
from edge.gateway.call import CALL, Call
from edge.gateway.limits.answers import put_headers, refusal
from edge.gateway.limits.clientip import client_address, networks
from edge.gateway.limits.limiter import Limiter
from edge.gateway.limits.plan import NOTHING, Plan
from edge.gateway.limits.policy import MICROS_PER_USD, TOKENS, USD, Limits, parse_budget
from edge.gateway.limits.ticket import Refused, Subject, Ticket
from edge.gateway.prices import PriceTable
from edge.gateway.tokens import generates
from edge.inbound import NATIVE_PREFIXES
from edge.response_hook import response_hook

log = logging.getLogger(__name__)

_BYTES_PER_TOKEN: Final = 4
_PLANS_KEPT: Final = 100_000
_XFF: Final = istr("X-Forwarded-For")
# Native output caps nested in an object: (the object's field, the cap's).
_NATIVE_CAPS: Final = (
    ("options", "num_predict"),  # Ollama
    ("sampling_params", "max_new_tokens"),  # SGLang
    ("parameters", "max_new_tokens"),  # TGI
)


def to_limits(entry: LimitConfig) -> Limits:
    """A config entry (or a policy's fields, in the same shape) as Limits."""
    budget = None
    if entry.budget_usd > 0 or entry.budget_tokens > 0:
        budget = parse_budget(
            entry.budget_usd if entry.budget_usd > 0 else float(entry.budget_tokens),
            unit=USD if entry.budget_usd > 0 else TOKENS,
            period=entry.budget_period,
            window_seconds=entry.budget_window_seconds,
            anchor=entry.budget_reset_at,
            soft=entry.budget_soft,
        )
    return Limits(entry.rpm, entry.tpm, entry.max_parallel, budget)


def from_proto(limits: limits_pb2.Limits) -> Limits:
    """A policy's Limits message as Limits (ill-formed budgets are left out, logged)."""
    entry = LimitConfig(
        rpm=max(0, limits.rpm),
        tpm=max(0, limits.tpm),
        max_parallel=max(0, limits.max_parallel),
        budget_period=limits.budget_period or "day",
        budget_window_seconds=limits.budget_window_seconds,
        budget_reset_at=limits.budget_reset_unix,
        budget_soft=limits.budget_soft,
    )
    try:
        return to_limits(
            dataclasses.replace(
                entry, budget_usd=limits.budget_usd, budget_tokens=limits.budget_tokens
            )
        )
    except (ConfigError, ValueError) as exc:
        log.warning("a budget in the policy is ill-formed, left out: %s", exc)
        return to_limits(entry)


class Gate:
    """Per-request limits for one edge."""

    def __init__(
        self, config: LimitsConfig, limiter: Limiter, prices: Callable[[], PriceTable]
    ) -> None:
        self.limiter = limiter
        self.prices = prices  # the usage recorder's table, replaced whole when prices change
        self.cap = config.completion_cap
        self.default_key = to_limits(config.default_key)
        self.client_ip = to_limits(config.client_ip)
        self.trusted = networks(config.trusted_proxies)
        self._config_keys = {e.name: to_limits(e) for e in config.keys if e.name}
        self._config_teams = {e.name: to_limits(e) for e in config.teams if e.name}
        self.keys: Mapping[str, Limits] = self._config_keys
        self.teams: Mapping[str, Limits] = self._config_teams
        # Plans by key id and by client address, for the limits in force: apply() drops them.
        self._plans: dict[str, Plan] = {}
        self._addresses: dict[str, Plan] = {}

    @property
    def active(self) -> bool:
        """Whether any request can be limited (else the proxy skips the gate)."""
        return bool(
            self.keys or self.teams or not self.default_key.empty or not self.client_ip.empty
        )

    def apply(self, keys: Mapping[str, Limits], teams: Mapping[str, Limits]) -> None:
        """Limits from the control plane's policy, over the config file's."""
        self.keys = {**self._config_keys, **{k: v for k, v in keys.items() if not v.empty}}
        self.teams = {**self._config_teams, **{k: v for k, v in teams.items() if not v.empty}}
        self._plans = {}
        self._addresses = {}

    def apply_policy(self, policy: gateway_pb2.Policy) -> None:
        """The limits on the policy's keys and teams (they reach every edge with it)."""
        self.apply(
            {k.id: from_proto(k.limits) for k in policy.keys if k.HasField("limits")},
            {t.name: from_proto(t.limits) for t in policy.teams if t.HasField("limits")},
        )

    def plan(self, request: ClientRequest, call: Call) -> Plan:
        """What the request counts against: its key's plan (with its team), or its client
        address's on an edge without keys; made once per policy version."""
        if call.key_id:
            plan = self._plans.get(call.key_id)
            if plan is not None and plan.team == call.team:
                return plan
            subjects = []
            limits = self.keys.get(call.key_id, self.default_key)
            if not limits.empty:
                subjects.append(Subject("key", call.key_id, limits))
            team = self.teams.get(call.team)
            if team is not None and not team.empty:
                subjects.append(Subject("team", call.team, team))
            return _remember(self._plans, call.key_id, Plan(subjects, call.team))
        if self.client_ip.empty:
            return NOTHING
        # Every X-Forwarded-For line, in order: a proxy that adds a line of its own (HAProxy)
        # puts the address it saw after the one the client wrote.
        forwarded = request.headers.getall(_XFF, ()) if self.trusted else ()
        address = client_address(request.remote, ", ".join(forwarded), self.trusted)
        plan = self._addresses.get(address)
        if plan is None:
            subject = Subject("ip", address, self.client_ip)
            plan = _remember(self._addresses, address, Plan((subject,)))
        return plan

    def admit(
        self, request: ClientRequest, call: Call, body: Mapping[str, Any], size: int
    ) -> Coroutine[Any, Any, None] | None:
        """Reserve the request (prompt estimate + max_tokens or the cap); the ticket goes on
        its Call for settle() and the headers. A plain call in the steady state (None:
        admitted, or nothing limits it); when a lease is short, the coroutine to await for
        the store's answer, which raises the 429/503 ApiError if refused."""
        plan = self.plan(request, call)
        if not plan.subjects:
            return None
        prompt = size // _BYTES_PER_TOKEN + 1
        tokens = self.reserve(call, body, prompt, request)
        cost = 0
        if plan.needs_cost and call.model:
            price = self.prices().lookup(call.model)
            if price is not None:
                cost = math.ceil(price.cost(prompt, 0, tokens - prompt) * MICROS_PER_USD)
        ticket = self.limiter.admit_now(plan, tokens, cost)
        if ticket is None:  # a lease is short: the store is asked
            return self._admit_later(call, plan, tokens, cost)
        call.limit = "allowed"
        call.ticket = ticket
        return None

    async def _admit_later(self, call: Call, plan: Plan, tokens: int, cost: int) -> None:
        try:
            ticket = await self.limiter.admit(plan, tokens=tokens, cost=cost)
        except Refused as exc:
            call.limit = exc.reason
            shown: dict[str, str] = {}
            put_headers(shown, Ticket(plan, plan.buckets, 0, 0), self.limiter.clock())
            raise refusal(exc, shown) from None
        call.limit = "allowed"
        call.ticket = ticket

    def reserve(
        self,
        call: Call,
        body: Mapping[str, Any],
        prompt: int,
        request: ClientRequest | None = None,
    ) -> int:
        """Tokens to reserve: the prompt estimate, plus max_tokens or the cap; for a native
        request (`request`: its method and path), its own output cap, or nothing more when it
        generates nothing."""
        if call.endpoint == "embeddings":
            return prompt
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            return prompt + asked
        if request is not None and call.endpoint in NATIVE_PREFIXES:
            if not generates(call.endpoint, request.method, request.path):
                return prompt
            return prompt + self._native_cap(body)
        return prompt + self.cap

    def _native_cap(self, body: Mapping[str, Any]) -> int:
        """A native generation's output cap: Ollama's options.num_predict, llama.cpp's
        n_predict, SGLang's sampling_params (TGI's parameters) max_new_tokens; else the cap
        (also for the servers' "no limit", -1)."""
        asked = _tokens(body.get("n_predict"))
        for field, name in _NATIVE_CAPS:
            if asked:
                break
            inner = body.get(field)
            if isinstance(inner, dict):
                asked = _tokens(inner.get(name))
        return asked or self.cap

    def settle(self, call: Call) -> None:
        ticket = call.ticket
        if ticket is None or ticket.settled:
            return
        tokens = call.prompt_tokens + call.completion_tokens
        cost = 0
        if tokens and ticket.plan.needs_cost:
            cost = math.ceil(self.prices().cost(call) * MICROS_PER_USD)
        self.limiter.settle(ticket, tokens=tokens, cost=cost)
        if ticket.warned:
            call.limit = "soft_budget"


def _tokens(value: object) -> int:
    """A positive token count, else 0 (a bool, a server's -1 for "no limit", not a number)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _remember(plans: dict[str, Plan], name: str, plan: Plan) -> Plan:
    """Keep a plan for its key or address (all of them forgotten once there are too many:
    client addresses are unbounded)."""
    if len(plans) >= _PLANS_KEPT:
        plans.clear()
    plans[name] = plan
    return plan


def put_limit_headers(request: ClientRequest, response: web.StreamResponse) -> None:
    """The x-ratelimit-* headers on every answer to a limited request."""
    call = request.get(CALL)
    if call is not None and call.ticket is not None:
        put_headers(response.headers, call.ticket, time.time())


limit_headers: Final = response_hook(put_limit_headers)  # on_response_prepare

LIMITS: Final = web.AppKey("limits", Gate)


def apply_policy(app: web.Application, policy: gateway_pb2.Policy) -> None:
    """The policy's limits on this edge at once (edge/gateway/policy.py calls this)."""
    from edge.app import PROXY

    gate = app.get(LIMITS)
    if gate is not None:
        gate.apply_policy(policy)
        if gate.active:  # never unset: requests admitted before must still be settled
            app[PROXY].limits = gate
