"""AdminService's gateway calls against a real replica: validation, what is stored (digests
only), the policy stream, seeded prices and the bounded audit log."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import cast

import grpc
import pytest

from controlplane.errors import ContendedError
from controlplane.gateway import records
from controlplane.gateway.admin import WRITE_TRIES, GatewayAdmin
from controlplane.gateway.audit import AuditLog
from controlplane.keys import KeyLayout
from controlplane.replica import Parts
from controlplane.store.etcd import EtcdStore
from controlplane.store.memory import MemoryStore
from corral.config import GatewayConfig, ModelAliasConfig, PriceConfig, Secret
from corral.v1 import (
    admin_pb2,
    content_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    providers_pb2,
    types_pb2,
)
from tests.controlplane import harness as h
from tests.support.etcd import EtcdCluster


async def _first_policy(address: str, **request: object) -> gateway_pb2.Policy:
    async with grpc.aio.insecure_channel(address) as channel:
        call = gateway_pb2_grpc.PolicyServiceStub(channel).WatchPolicy(
            gateway_pb2.WatchPolicyRequest(edge_id="t", **request)
        )
        async for response in call:
            call.cancel()
            return response.policy
    raise AssertionError("no policy")


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def test_bad_requests_are_refused_with_a_reason() -> None:
    """Bad names, unknown teams or ids, negative expiry or prices: each a gRPC code saying why."""
    async with h.running(h.config()) as address, h.admin(address) as admin:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        assert await _code(admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="a b"))) == invalid
        assert await _code(admin.CreateTeam(gateway_pb2.CreateTeamRequest())) == invalid
        await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
        taken = admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
        assert await _code(taken) == grpc.StatusCode.ALREADY_EXISTS
        unknown = admin.CreateKey(gateway_pb2.CreateKeyRequest(team="nope"))
        assert await _code(unknown) == grpc.StatusCode.NOT_FOUND
        negative = admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t", expires_in_seconds=-1))
        assert await _code(negative) == invalid
        # Beyond a century: its milliseconds overflowed int64 (UNKNOWN and a traceback).
        ages = admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t", expires_in_seconds=2**62))
        assert await _code(ages) == invalid
        forever = content_pb2.ContentPolicy(cache_ttl_seconds=1e16)  # past Valkey's int64 ms
        too_long = admin.SetTeamContent(
            content_pb2.SetTeamContentRequest(name="t", content=forever)
        )
        assert await _code(too_long) == invalid
        empty_model = admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t", models=[""]))
        assert await _code(empty_model) == invalid
        no_key = admin.RevokeKey(gateway_pb2.RevokeKeyRequest(id="ck_000000000000"))
        assert await _code(no_key) == grpc.StatusCode.NOT_FOUND
        price = gateway_pb2.ModelPrice(model="m", input_per_mtok=-1.0)
        assert await _code(admin.SetPrice(gateway_pb2.SetPriceRequest(price=price))) == invalid
        gone = admin.DeletePrice(gateway_pb2.DeletePriceRequest(model="m"))
        assert await _code(gone) == grpc.StatusCode.NOT_FOUND


async def test_only_the_digest_is_stored_and_streamed(etcd: EtcdCluster) -> None:
    """Only the SHA-256 is stored and streamed (with team, models, expiry); lists never show it."""
    cfg = h.etcd_config(etcd.endpoints)
    async with h.running(cfg) as address, h.admin(address) as admin:
        await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="search"))
        created = await admin.CreateKey(
            gateway_pb2.CreateKeyRequest(team="search", models=["b", "a"], expires_in_seconds=60)
        )
        other = await admin.CreateKey(gateway_pb2.CreateKeyRequest(team="search"))
        secret = created.secret
        assert len(secret) > 40 and created.key.prefix == secret[: records.SHOWN_PREFIX]
        assert created.key.expires_unix_ms - created.key.created_unix_ms == 60_000

        store = EtcdStore(list(etcd.endpoints))
        await store.start()
        try:
            layout = KeyLayout.from_prefix(cfg.etcd_prefix)
            kv = await store.get(records.key_key(layout, created.key.id))
            _, everything = await store.get_prefix(b"")
        finally:
            await store.close()
        for written in everything:  # keys, audit entries, whatever else: no secret anywhere
            for plain in (secret, other.secret):
                assert plain.encode() not in written.value and plain.encode() not in written.key
        assert kv is not None
        stored = gateway_pb2.VirtualKey.FromString(kv.value)
        assert stored.secret_sha256 == hashlib.sha256(secret.encode()).digest()

        policy = await _first_policy(address)
        [streamed] = [k for k in policy.keys if k.id == created.key.id]
        assert streamed.secret_sha256 == stored.secret_sha256
        assert list(streamed.models) == ["a", "b"] and streamed.team == "search"
        assert [t.name for t in policy.teams] == ["search"]

        listed = await admin.ListKeys(gateway_pb2.ListKeysRequest(team="search"))
        assert {k.id for k in listed.keys} == {created.key.id, other.key.id}
        assert not any(k.secret_sha256 for k in listed.keys)
        assert not (await admin.ListKeys(gateway_pb2.ListKeysRequest(team="x"))).keys


async def test_policy_versions_move_on_and_routing_does_not() -> None:
    """Policy writes bump the policy version, not routing's; asking for a newer one waits for it."""
    async with h.running(h.config()) as address, h.admin(address) as admin:
        before = await _first_policy(address)
        routing = (await admin.ListBackends(admin_pb2.ListBackendsRequest())).version
        await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
        after = await _first_policy(address, last_applied_version=before.version)
        assert after.version > before.version and after.cluster_id == before.cluster_id
        assert (await admin.ListBackends(admin_pb2.ListBackendsRequest())).version == routing


async def test_configured_prices_are_seeded_and_streamed() -> None:
    """Config-file prices are seeded, listed, streamed; an unset cached-input price stays unset."""
    gateway = GatewayConfig(
        prices=(
            PriceConfig(model="llama-70b", input=0.5, output=1.5),
            PriceConfig(model="qwen", input=0.2, output=0.4, cached_input=0.1),
        )
    )
    async with h.running(h.config(gateway=gateway)) as address, h.admin(address) as admin:
        listed = await admin.ListPrices(gateway_pb2.ListPricesRequest())
        by_model = {p.model: p for p in listed.prices}
        assert not by_model["llama-70b"].HasField("cached_input_per_mtok")
        assert by_model["qwen"].cached_input_per_mtok == 0.1
        policy = await _first_policy(address)
        assert {p.model for p in policy.prices} == {"llama-70b", "qwen"}


async def test_audit_names_who_and_keeps_the_newest() -> None:
    """Alias, drain, key and price changes are audited by token hash; newest audit_limit kept."""
    cfg = h.config(
        admin_token=Secret("admin-s3cret"),
        gateway=GatewayConfig(audit_limit=4),
        aliases=(ModelAliasConfig("seeded", ("x",)),),
    )
    async with h.running(cfg) as address, h.admin(address, "admin-s3cret") as admin:
        alias = types_pb2.ModelAlias(name="fast", targets=["m1"])
        await admin.SetAlias(admin_pb2.SetAliasRequest(alias=alias))
        await admin.DeleteAlias(admin_pb2.DeleteAliasRequest(name="fast"))
        await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
        created = await admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t"))
        await admin.RevokeKey(gateway_pb2.RevokeKeyRequest(id=created.key.id))
        await admin.RevokeKey(gateway_pb2.RevokeKeyRequest(id=created.key.id))  # no change
        entries = (await admin.ListAudit(gateway_pb2.ListAuditRequest())).entries
        assert [(e.action, e.target) for e in entries] == [
            ("alias.delete", "fast"),
            ("team.create", "t"),
            ("key.create", created.key.id),
            ("key.revoke", created.key.id),
        ]
        tag = hashlib.sha256(b"admin-s3cret").hexdigest()[:8]
        assert {e.actor for e in entries} == {f"admin-token:{tag}"}
        assert all(e.peer and e.unix_ms for e in entries)
        newest = (await admin.ListAudit(gateway_pb2.ListAuditRequest(limit=1))).entries
        assert [e.action for e in newest] == ["key.revoke"]


async def test_hosted_provider_changes_are_audited() -> None:
    """Providers and fallback chains set and removed through AdminService are audited too."""
    async with h.running(h.config()) as address, h.admin(address) as admin:
        provider = providers_pb2.Provider(
            name="openai", type=providers_pb2.PROVIDER_TYPE_OPENAI, credential="openai-prod"
        )
        await admin.SetProvider(providers_pb2.SetProviderRequest(provider=provider))
        chain = providers_pb2.FallbackChain(model="m", targets=["openai/gpt-4o-mini"])
        await admin.SetFallbacks(providers_pb2.SetFallbacksRequest(chain=chain))
        await admin.DeleteFallbacks(providers_pb2.DeleteFallbacksRequest(model="m"))
        await admin.RemoveProvider(providers_pb2.RemoveProviderRequest(name="openai"))
        entries = (await admin.ListAudit(gateway_pb2.ListAuditRequest())).entries
        assert [(e.action, e.target) for e in entries] == [
            ("provider.set", "openai"),
            ("fallbacks.set", "m"),
            ("fallbacks.delete", "m"),
            ("provider.remove", "openai"),
        ]
        assert entries[0].actor == "open" and "openai-prod" in entries[0].detail


async def test_the_policy_stream_needs_the_edge_token() -> None:
    """PolicyService needs the edge token, like RoutingService: none or the admin token refused."""
    cfg = h.config(edge_token=Secret("edge-s3cret"), admin_token=Secret("admin-s3cret"))
    async with h.running(cfg) as address, grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.PolicyServiceStub(channel)
        for metadata in ((), h.bearer("admin-s3cret")):
            call = stub.WatchPolicy(gateway_pb2.WatchPolicyRequest(), metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        call = stub.WatchPolicy(gateway_pb2.WatchPolicyRequest(), metadata=h.bearer("edge-s3cret"))
        first = await call.read()
        assert first.policy.version > 0
        call.cancel()


class _RacedStore(MemoryStore):
    """A store where another writer changes a key or team between our read and our first
    `times` conditional writes to it: the lost races a retry loop exists for."""

    def __init__(self, times: int = 1) -> None:
        super().__init__()
        self.raced = False
        self.times = times

    async def put_if(
        self,
        key: bytes,
        value: bytes,
        *,
        lease: int = 0,
        expect_absent_or_lease: int | None = None,
        expect_mod_revision: int | None = None,
    ) -> bool:
        if self.times and (b"/keys/" in key or b"/teams/" in key) and expect_mod_revision:
            self.raced = True
            self.times -= 1
            current = await self.get(key)
            assert current is not None
            await self.put(key, current.value)  # the other writer: a new mod revision
        return await super().put_if(
            key,
            value,
            lease=lease,
            expect_absent_or_lease=expect_absent_or_lease,
            expect_mod_revision=expect_mod_revision,
        )


async def test_a_retried_change_is_audited_once() -> None:
    """A key change that loses a write race and retries is one audit entry, not one per try."""
    store = _RacedStore()
    await store.start()
    parts = cast(Parts, SimpleNamespace(store=store, policy=None))
    layout = KeyLayout.from_prefix("/corral-test")
    admin = GatewayAdmin(layout, AuditLog(layout, 100), write_wait=0.1)
    await admin.create_team(gateway_pb2.CreateTeamRequest(name="t"), parts)
    created = await admin.create_key(gateway_pb2.CreateKeyRequest(team="t"), parts)
    await admin.revoke_key(gateway_pb2.RevokeKeyRequest(id=created.key.id), parts)
    assert store.raced
    actions = [e.action for e in await admin.audit.entries(store)]
    assert actions == ["team.create", "key.create", "key.revoke"]
    stored = await store.get(records.key_key(layout, created.key.id))
    assert stored is not None and gateway_pb2.VirtualKey.FromString(stored.value).revoked_unix_ms
    await store.close()


@pytest.mark.parametrize("races", [WRITE_TRIES - 1, WRITE_TRIES])
async def test_a_change_that_keeps_losing_races_is_aborted_not_invalid(races: int) -> None:
    """Losing a write race every try is ABORTED (retry it), never INVALID_ARGUMENT."""
    store = _RacedStore(times=races)
    await store.start()
    parts = cast(Parts, SimpleNamespace(store=store, policy=None))
    layout = KeyLayout.from_prefix("/corral-test")
    admin = GatewayAdmin(layout, AuditLog(layout, 100), write_wait=0.1)
    await admin.create_team(gateway_pb2.CreateTeamRequest(name="t"), parts)

    def rename(team: gateway_pb2.Team) -> str:
        team.limits.rpm = 7
        return "rpm=7"

    if races < WRITE_TRIES:  # each lost race waits a little longer; the last try wins
        assert (await admin.change_team(parts, "t", "team.limits", rename)).limits.rpm == 7
    else:
        with pytest.raises(ContendedError) as caught:
            await admin.change_team(parts, "t", "team.limits", rename)
        assert caught.value.code == grpc.StatusCode.ABORTED
    await store.close()
