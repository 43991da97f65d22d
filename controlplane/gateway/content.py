"""AdminService's cache and guardrail calls: SetKeyContent and SetTeamContent (and the checks
CreateKey and CreateTeam apply to settings given with them).

The settings live on the key and team records, so the policy carries them to every edge;
only the fields a request sets change (proto3 optional fields).
"""

from __future__ import annotations

import math

from google.protobuf.message import Message

from controlplane.errors import InvalidArgumentError
from controlplane.gateway.admin import GatewayAdmin, Handler
from controlplane.gateway.audit import fields
from controlplane.replica import Parts
from controlplane.validation import check_name
from corral.config_gateway import MAX_CACHE_TTL_SECONDS
from corral.v1 import content_pb2, gateway_pb2

PII_ACTIONS = ("off", "log", "redact", "block")


def check_content(content: content_pb2.ContentPolicy) -> None:
    """InvalidArgument naming the first bad field."""
    if content.HasField("cache_ttl_seconds"):
        ttl = content.cache_ttl_seconds
        if not math.isfinite(ttl) or not 0 <= ttl <= MAX_CACHE_TTL_SECONDS:
            raise InvalidArgumentError(
                f"content.cache_ttl_seconds must be between 0 and {MAX_CACHE_TTL_SECONDS} (a year)"
            )
    if content.HasField("pii") and content.pii not in PII_ACTIONS:
        raise InvalidArgumentError(
            f"content.pii must be one of {', '.join(PII_ACTIONS)}, got {content.pii!r}"
        )


class ContentAdmin:
    def __init__(self, gateway: GatewayAdmin) -> None:
        self._gateway = gateway

    def methods(self) -> dict[str, tuple[Handler, type[Message]]]:
        return {
            "SetKeyContent": (self.set_key_content, content_pb2.SetKeyContentRequest),
            "SetTeamContent": (self.set_team_content, content_pb2.SetTeamContentRequest),
        }

    async def set_key_content(
        self, request: content_pb2.SetKeyContentRequest, parts: Parts
    ) -> content_pb2.SetKeyContentResponse:
        check_content(request.content)

        def change(key: gateway_pb2.VirtualKey) -> bool:
            key.content.MergeFrom(request.content)
            return True

        key = await self._gateway.change_key(parts, request.id, "key.content", change)
        return content_pb2.SetKeyContentResponse(id=key.id, content=key.content)

    async def set_team_content(
        self, request: content_pb2.SetTeamContentRequest, parts: Parts
    ) -> content_pb2.SetTeamContentResponse:
        check_name(request.name, "team name")
        check_content(request.content)

        def change(team: gateway_pb2.Team) -> str:
            team.content.MergeFrom(request.content)
            return fields(request.content)

        team = await self._gateway.change_team(parts, request.name, "team.content", change)
        return content_pb2.SetTeamContentResponse(name=team.name, content=team.content)
