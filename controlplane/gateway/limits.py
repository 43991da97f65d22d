"""AdminService's limits calls: SetKeyLimits and SetTeamLimits (and the checks CreateKey and
CreateTeam apply to limits given with them).

Limits live on the key and team records, so the policy that carries keys and teams to edges
carries them too; only the fields a request sets change (proto3 optional fields).
"""

from __future__ import annotations

import math

from google.protobuf.message import Message

from controlplane.errors import InvalidArgumentError
from controlplane.gateway.admin import GatewayAdmin, Handler
from controlplane.gateway.audit import fields
from controlplane.replica import Parts
from controlplane.validation import check_name
from corral.v1 import gateway_pb2, limits_pb2

PERIODS = ("hour", "day", "week", "month", "fixed")
_COUNTS = ("rpm", "tpm", "max_parallel", "budget_tokens")
_AMOUNTS = ("budget_usd", "budget_window_seconds", "budget_reset_unix")


def check_limits(limits: limits_pb2.Limits) -> None:
    """InvalidArgument naming the first bad field."""
    for name in _COUNTS:
        if limits.HasField(name) and getattr(limits, name) < 0:  # type: ignore[arg-type]
            raise InvalidArgumentError(f"limits.{name} must not be negative")
    for name in _AMOUNTS:
        value = getattr(limits, name)
        if limits.HasField(name) and (not math.isfinite(value) or value < 0):  # type: ignore[arg-type]
            raise InvalidArgumentError(f"limits.{name} must be a finite number >= 0")
    if limits.HasField("budget_period") and limits.budget_period not in PERIODS:
        raise InvalidArgumentError(
            f"limits.budget_period must be one of {', '.join(PERIODS)}, "
            f"got {limits.budget_period!r}"
        )
    if limits.HasField("budget_soft") and not 0 <= limits.budget_soft < 1:
        raise InvalidArgumentError("limits.budget_soft must be a fraction in [0, 1)")


def merge(stored: limits_pb2.Limits, given: limits_pb2.Limits) -> None:
    """The fields set in `given` over `stored`; then the whole checked for coherence."""
    stored.MergeFrom(given)
    if stored.budget_period == "fixed" and stored.budget_window_seconds <= 0:
        raise InvalidArgumentError("a fixed budget period needs limits.budget_window_seconds")
    if stored.budget_usd > 0 and stored.budget_tokens > 0:
        raise InvalidArgumentError("a budget is in USD or in tokens, not both")


class LimitsAdmin:
    def __init__(self, gateway: GatewayAdmin) -> None:
        self._gateway = gateway

    def methods(self) -> dict[str, tuple[Handler, type[Message]]]:
        return {
            "SetKeyLimits": (self.set_key_limits, limits_pb2.SetKeyLimitsRequest),
            "SetTeamLimits": (self.set_team_limits, limits_pb2.SetTeamLimitsRequest),
        }

    async def set_key_limits(
        self, request: limits_pb2.SetKeyLimitsRequest, parts: Parts
    ) -> limits_pb2.SetKeyLimitsResponse:
        check_limits(request.limits)

        def change(key: gateway_pb2.VirtualKey) -> bool:
            merge(key.limits, request.limits)
            return True

        key = await self._gateway.change_key(parts, request.id, "key.limits", change)
        return limits_pb2.SetKeyLimitsResponse(id=key.id, limits=key.limits)

    async def set_team_limits(
        self, request: limits_pb2.SetTeamLimitsRequest, parts: Parts
    ) -> limits_pb2.SetTeamLimitsResponse:
        check_name(request.name, "team name")
        check_limits(request.limits)

        def change(team: gateway_pb2.Team) -> str:
            merge(team.limits, request.limits)
            return fields(request.limits)

        team = await self._gateway.change_team(parts, request.name, "team.limits", change)
        return limits_pb2.SetTeamLimitsResponse(name=team.name, limits=team.limits)
