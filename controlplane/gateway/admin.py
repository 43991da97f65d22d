"""AdminService's gateway calls: teams, virtual keys, prices and the audit log.

Writes go to the store (audited first), then wait briefly for this replica's policy view to
show them, so the edges following this replica have the change about when the call returns.
Reads come from the store itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from controlplane.decoding import decode_stored as _decode
from controlplane.errors import (
    ContendedError,
    InvalidArgumentError,
    NameTakenError,
    NotFoundError,
)
from controlplane.gateway import records
from controlplane.gateway.audit import AuditLog
from controlplane.keys import KeyLayout
from controlplane.replica import Parts
from controlplane.validation import MAX_MODEL_ID, check_name, check_text
from corral.v1 import gateway_pb2

log = logging.getLogger(__name__)

MAX_KEY_MODELS = 256
MAX_DESCRIPTION = 1024
# Writes that lost a race with another writer of the same record are tried this often,
# after a jittered pause that doubles each time (5 ms to 320 ms, 0.6 s in all at most): the
# writers of one record spread out instead of colliding again at once.
WRITE_TRIES = 8
_FIRST_PAUSE = 0.005
# The furthest a key's expiry may lie (about a century): its milliseconds fit int64 easily.
MAX_EXPIRES_IN_SECONDS = 100 * 366 * 24 * 3600


async def _lost_race(attempt: int) -> None:
    """The pause after attempt `attempt` (from 0) lost a write race."""
    await asyncio.sleep(random.uniform(0.5, 1.0) * _FIRST_PAUSE * 2**attempt)


M = TypeVar("M", bound=Message)
Handler = Callable[[Any, Parts], Awaitable[Any]]


def check_model(model: str, what: str = "model") -> None:
    if not model:
        raise InvalidArgumentError(f"{what} is empty")
    check_text(model, what, MAX_MODEL_ID)


def _public(key: gateway_pb2.VirtualKey) -> gateway_pb2.VirtualKey:
    shown = gateway_pb2.VirtualKey()
    shown.CopyFrom(key)
    shown.ClearField("secret_sha256")
    return shown


class GatewayAdmin:
    def __init__(self, layout: KeyLayout, audit: AuditLog, *, write_wait: float) -> None:
        self._layout = layout
        self.audit = audit
        self._write_wait = write_wait

    def methods(self) -> dict[str, tuple[Handler, type[Message]]]:
        return {
            "CreateTeam": (self.create_team, gateway_pb2.CreateTeamRequest),
            "ListTeams": (self.list_teams, gateway_pb2.ListTeamsRequest),
            "CreateKey": (self.create_key, gateway_pb2.CreateKeyRequest),
            "ListKeys": (self.list_keys, gateway_pb2.ListKeysRequest),
            "RevokeKey": (self.revoke_key, gateway_pb2.RevokeKeyRequest),
            "SetKeyDisabled": (self.set_key_disabled, gateway_pb2.SetKeyDisabledRequest),
            "SetPrice": (self.set_price, gateway_pb2.SetPriceRequest),
            "ListPrices": (self.list_prices, gateway_pb2.ListPricesRequest),
            "DeletePrice": (self.delete_price, gateway_pb2.DeletePriceRequest),
            "ListAudit": (self.list_audit, gateway_pb2.ListAuditRequest),
        }

    async def _settle(self, parts: Parts, revision: int) -> None:
        if parts.policy is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._write_wait):
                await parts.policy.wait_revision(revision)

    async def _all(self, parts: Parts, prefix: bytes, cls: type[M]) -> list[M]:
        _, kvs = await parts.store.get_prefix(prefix)
        found = (_decode(cls, kv.value) for kv in kvs)
        return [m for m in found if m is not None]

    # Teams ------------------------------------------------------------------------------

    async def create_team(
        self, request: gateway_pb2.CreateTeamRequest, parts: Parts
    ) -> gateway_pb2.CreateTeamResponse:
        check_name(request.name, "team name")
        check_text(request.description, "description", MAX_DESCRIPTION)
        key = records.team_key(self._layout, request.name)
        if await parts.store.get(key) is not None:
            raise NameTakenError(f"a team named {request.name!r} exists already")
        team = gateway_pb2.Team(
            name=request.name,
            description=request.description,
            created_unix_ms=int(time.time() * 1000),
        )
        if request.HasField("limits"):
            _limits(team.limits, request.limits)
        if request.HasField("content"):
            _content(team.content, request.content)
        await self.audit.record(parts.store, "team.create", team.name, team.description)
        if not await parts.store.put_if(key, team.SerializeToString(), expect_mod_revision=0):
            raise NameTakenError(f"a team named {request.name!r} exists already")
        stored = await parts.store.get(key)
        await self._settle(parts, stored.mod_revision if stored is not None else 0)
        return gateway_pb2.CreateTeamResponse(team=team)

    async def list_teams(
        self, request: gateway_pb2.ListTeamsRequest, parts: Parts
    ) -> gateway_pb2.ListTeamsResponse:
        teams = await self._all(parts, records.teams_prefix(self._layout), gateway_pb2.Team)
        return gateway_pb2.ListTeamsResponse(teams=teams)

    # Keys -------------------------------------------------------------------------------

    async def create_key(
        self, request: gateway_pb2.CreateKeyRequest, parts: Parts
    ) -> gateway_pb2.CreateKeyResponse:
        check_name(request.team, "team name")
        check_text(request.description, "description", MAX_DESCRIPTION)
        if len(request.models) > MAX_KEY_MODELS:
            raise InvalidArgumentError(f"a key may name at most {MAX_KEY_MODELS} models")
        for model in request.models:
            check_model(model)
        if request.expires_in_seconds < 0:
            raise InvalidArgumentError("expires_in_seconds must not be negative")
        if await parts.store.get(records.team_key(self._layout, request.team)) is None:
            raise NotFoundError(
                f"no team named {request.team!r}; create it first "
                f"(corral teams create {request.team})"
            )
        if not 0 <= request.expires_in_seconds <= MAX_EXPIRES_IN_SECONDS:
            raise InvalidArgumentError(
                f"expires_in_seconds must be between 0 and {MAX_EXPIRES_IN_SECONDS} (a century)"
            )
        now = int(time.time() * 1000)
        for _ in range(WRITE_TRIES):
            key_id, secret = records.new_secret()
            key = gateway_pb2.VirtualKey(
                id=key_id,
                team=request.team,
                secret_sha256=records.digest(secret),
                prefix=secret[: records.SHOWN_PREFIX],
                models=sorted(set(request.models)),
                expires_unix_ms=now + request.expires_in_seconds * 1000
                if request.expires_in_seconds
                else 0,
                created_unix_ms=now,
                description=request.description,
            )
            if request.HasField("limits"):
                _limits(key.limits, request.limits)
            if request.HasField("content"):
                _content(key.content, request.content)
            where = records.key_key(self._layout, key_id)
            detail = f"team={key.team} models={','.join(key.models) or '*'}"
            if key.expires_unix_ms:
                detail += f" expires_unix_ms={key.expires_unix_ms}"
            await self.audit.record(parts.store, "key.create", key_id, detail)
            if await parts.store.put_if(where, key.SerializeToString(), expect_mod_revision=0):
                stored = await parts.store.get(where)
                await self._settle(parts, stored.mod_revision if stored is not None else 0)
                return gateway_pb2.CreateKeyResponse(key=_public(key), secret=secret)
        raise InvalidArgumentError("could not find a free key id; try again")  # pragma: no cover

    async def list_keys(
        self, request: gateway_pb2.ListKeysRequest, parts: Parts
    ) -> gateway_pb2.ListKeysResponse:
        keys = await self._all(parts, records.keys_prefix(self._layout), gateway_pb2.VirtualKey)
        return gateway_pb2.ListKeysResponse(
            keys=[_public(k) for k in keys if not request.team or k.team == request.team]
        )

    async def change_key(
        self,
        parts: Parts,
        key_id: str,
        action: str,
        change: Callable[[gateway_pb2.VirtualKey], bool],
    ) -> gateway_pb2.VirtualKey:
        """Apply change (False: nothing to do) to a stored key, atomically; audited."""
        if not key_id:
            raise InvalidArgumentError("key id is empty")
        check_text(key_id, "key id")
        where = records.key_key(self._layout, key_id)
        audited = False  # once per call: a lost race retried is still one change
        for attempt in range(WRITE_TRIES):
            if attempt:
                await _lost_race(attempt - 1)
            kv = await parts.store.get(where)
            key = _decode(gateway_pb2.VirtualKey, kv.value) if kv is not None else None
            if kv is None or key is None:
                raise NotFoundError(f"no key with id {key_id!r}")
            if not change(key):
                return _public(key)
            if not audited:
                await self.audit.record(parts.store, action, key_id, f"team={key.team}")
                audited = True
            if await parts.store.put_if(
                where, key.SerializeToString(), expect_mod_revision=kv.mod_revision
            ):
                stored = await parts.store.get(where)
                await self._settle(parts, stored.mod_revision if stored is not None else 0)
                return _public(key)
        raise ContendedError(f"key {key_id!r} kept changing under us; try again")

    async def change_team(
        self, parts: Parts, name: str, action: str, change: Callable[[gateway_pb2.Team], str]
    ) -> gateway_pb2.Team:
        """Apply change (it returns the audit detail) to a stored team, atomically; audited.
        The caller has checked the name."""
        where = records.team_key(self._layout, name)
        audited = False  # once per call: a lost race retried is still one change
        for attempt in range(WRITE_TRIES):
            if attempt:
                await _lost_race(attempt - 1)
            kv = await parts.store.get(where)
            team = _decode(gateway_pb2.Team, kv.value) if kv is not None else None
            if kv is None or team is None:
                raise NotFoundError(f"no team named {name!r}")
            detail = change(team)
            if not audited:
                await self.audit.record(parts.store, action, team.name, detail)
                audited = True
            if await parts.store.put_if(
                where, team.SerializeToString(), expect_mod_revision=kv.mod_revision
            ):
                stored = await parts.store.get(where)
                await self._settle(parts, stored.mod_revision if stored is not None else 0)
                return team
        raise ContendedError(f"team {name!r} kept changing under us; try again")

    async def revoke_key(
        self, request: gateway_pb2.RevokeKeyRequest, parts: Parts
    ) -> gateway_pb2.RevokeKeyResponse:
        def revoke(key: gateway_pb2.VirtualKey) -> bool:
            if key.revoked_unix_ms:
                return False
            key.revoked_unix_ms = int(time.time() * 1000)
            return True

        key = await self.change_key(parts, request.id, "key.revoke", revoke)
        return gateway_pb2.RevokeKeyResponse(key=key)

    async def set_key_disabled(
        self, request: gateway_pb2.SetKeyDisabledRequest, parts: Parts
    ) -> gateway_pb2.SetKeyDisabledResponse:
        def toggle(key: gateway_pb2.VirtualKey) -> bool:
            if key.disabled == request.disabled:
                return False
            key.disabled = request.disabled
            return True

        action = "key.disable" if request.disabled else "key.enable"
        key = await self.change_key(parts, request.id, action, toggle)
        return gateway_pb2.SetKeyDisabledResponse(key=key)

    # Prices -----------------------------------------------------------------------------

    async def set_price(
        self, request: gateway_pb2.SetPriceRequest, parts: Parts
    ) -> gateway_pb2.SetPriceResponse:
        price = request.price
        check_price(price)
        cached = (
            f"{price.cached_input_per_mtok:g}"
            if price.HasField("cached_input_per_mtok")
            else "input"
        )
        detail = (
            f"input={price.input_per_mtok:g} cached_input={cached} "
            f"output={price.output_per_mtok:g} USD/Mtok"
        )
        await self.audit.record(parts.store, "price.set", price.model, detail)
        revision = await parts.store.put(
            records.price_key(self._layout, price.model), price.SerializeToString()
        )
        await self._settle(parts, revision)
        return gateway_pb2.SetPriceResponse(price=price)

    async def list_prices(
        self, request: gateway_pb2.ListPricesRequest, parts: Parts
    ) -> gateway_pb2.ListPricesResponse:
        prefix = records.prices_prefix(self._layout)
        return gateway_pb2.ListPricesResponse(
            prices=await self._all(parts, prefix, gateway_pb2.ModelPrice)
        )

    async def delete_price(
        self, request: gateway_pb2.DeletePriceRequest, parts: Parts
    ) -> gateway_pb2.DeletePriceResponse:
        check_model(request.model)
        where = records.price_key(self._layout, request.model)
        if await parts.store.get(where) is None:
            raise NotFoundError(f"no price set for model {request.model!r}")
        await self.audit.record(parts.store, "price.delete", request.model)
        revision = await parts.store.delete(where)
        await self._settle(parts, revision)
        return gateway_pb2.DeletePriceResponse()

    # Audit ------------------------------------------------------------------------------

    async def list_audit(
        self, request: gateway_pb2.ListAuditRequest, parts: Parts
    ) -> gateway_pb2.ListAuditResponse:
        entries = await self.audit.entries(parts.store, request.limit)
        return gateway_pb2.ListAuditResponse(entries=entries)


def _content(stored: Any, given: Any) -> None:
    """Cache and guardrail settings given with CreateKey/CreateTeam (gateway/content.py)."""
    from controlplane.gateway.content import check_content

    check_content(given)
    stored.MergeFrom(given)


def _limits(stored: Any, given: Any) -> None:
    """Limits given with CreateKey/CreateTeam (controlplane/gateway/limits.py checks them)."""
    from controlplane.gateway.limits import check_limits, merge

    check_limits(given)
    merge(stored, given)


def check_price(price: gateway_pb2.ModelPrice) -> None:
    check_model(price.model, "price.model")
    for name in ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok"):
        value = getattr(price, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"price.{name} must be a finite number >= 0, got {value}")
