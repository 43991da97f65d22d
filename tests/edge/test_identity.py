"""The edge's key table (edge/gateway/identity.py) and its persisted policy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path

import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import controlplane
from corral.config import ControlPlaneConfig, EdgeConfig, IdentityConfig, Secret
from corral.v1 import gateway_pb2
from edge.errors import ApiError
from edge.gateway.identity import KeyTable, _fastest_sha256, digest
from edge.gateway.policy import load_policy, save_policy
from tests.controlplane import harness as h
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, snapshot
from tests.edge.test_virtual_keys import policy_version
from tests.support.net import eventually, free_port


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def _bearer(secret: str) -> CIMultiDictProxy[str]:
    return _headers(Authorization=f"Bearer {secret}")


def _key(secret: str, key_id: str, **fields: object) -> gateway_pb2.VirtualKey:
    return gateway_pb2.VirtualKey(
        id=key_id,
        team="t",
        secret_sha256=hashlib.sha256(secret.encode()).digest(),
        **fields,
    )


def _refusal(table: KeyTable, headers: CIMultiDictProxy[str]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        table.check(headers)
    return caught.value


def test_either_sha256_gives_the_policy_digest() -> None:
    """Whichever SHA-256 the CPU picks, a key hashes as hashlib does, and digest() uses that one."""
    secrets = ["sk-corral-" + "x" * 50, "k", "sk-\udcff-surrogate", "é" * 40]
    for has_sha in (True, False):
        sha256 = _fastest_sha256(has_sha)
        for secret in secrets:
            raw = secret.encode("utf-8", "surrogateescape")
            assert sha256(raw).digest() == hashlib.sha256(raw).digest()
    assert digest(secrets[0]) == hashlib.sha256(secrets[0].encode()).digest()


def test_a_key_in_any_spelling_of_its_header() -> None:
    """Bearer in any case or spacing, x-api-key in any case, non-UTF-8 keys: all find their key."""
    odd = "sk-\udcff-odd"
    table = KeyTable(EdgeConfig())
    table.apply(
        gateway_pb2.Policy(
            version=1,
            keys=[
                _key("good", "ck_good"),
                gateway_pb2.VirtualKey(
                    id="ck_odd",
                    team="t",
                    secret_sha256=hashlib.sha256(odd.encode("utf-8", "surrogateescape")).digest(),
                ),
            ],
        )
    )
    for auth in ("Bearer good", "bearer good", "BEARER  good ", "BeArEr good"):
        found = table.check(_headers(Authorization=auth))
        assert found is not None and found.key_id == "ck_good", auth
    for name in ("x-api-key", "X-Api-Key", "X-API-KEY"):
        found = table.check(CIMultiDictProxy(CIMultiDict({name: " good"})))
        assert found is not None and found.key_id == "ck_good", name
    found = table.check(_bearer(odd))
    assert found is not None and found.key_id == "ck_odd"
    assert _refusal(table, _headers(Authorization="Basic good")).status == 401


def test_open_until_a_key_exists() -> None:
    """No key anywhere: no identity and no refusal; require_keys refuses even then."""
    assert KeyTable(EdgeConfig()).check(_headers()) is None
    strict = KeyTable(EdgeConfig(identity=IdentityConfig(require_keys=True)))
    assert _refusal(strict, _headers()).status == 401


def test_each_refusal_says_why() -> None:
    """Unknown, revoked, disabled, expired keys: 401s saying why; a good key passes either way."""
    table = KeyTable(EdgeConfig())
    past = int((time.time() - 5) * 1000)
    future = int((time.time() + 3600) * 1000)
    table.apply(
        gateway_pb2.Policy(
            version=7,
            keys=[
                _key("good", "ck_good", models=["m"], expires_unix_ms=future),
                _key("gone", "ck_gone", revoked_unix_ms=1),
                _key("off", "ck_off", disabled=True),
                _key("old", "ck_old", expires_unix_ms=past),
            ],
        )
    )
    identity = table.check(_bearer("good"))
    assert identity is not None and identity.key_id == "ck_good" and identity.team == "t"
    assert table.check(_headers(x_api_key="good")) is identity
    identity.check_model("m")
    with pytest.raises(ApiError) as denied:
        identity.check_model("other")
    assert denied.value.status == 403 and denied.value.code == "model_not_allowed"
    for secret, words in (
        ("nope", "Incorrect"),
        ("gone", "revoked"),
        ("off", "disabled"),
        ("old", "expired"),
    ):
        refusal = _refusal(table, _bearer(secret))
        assert refusal.status == 401 and words in refusal.message
        assert refusal.code == "invalid_api_key" and secret not in refusal.message
    assert _refusal(table, _headers()).code == "missing_api_key"
    assert table.policy_version == 7


def test_digest_is_sha256_of_the_key() -> None:
    """A key's digest is hashlib's SHA-256 of its UTF-8 (undecodable bytes kept as they came)."""
    for secret in ("sk-corral-" + "x" * 40, "", "kéy", "bad\udcff", "k" * 1000):
        assert digest(secret) == hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def test_revoking_every_key_keeps_keys_required() -> None:
    """A policy whose only key is revoked still requires keys (the edge never reopens)."""
    table = KeyTable(EdgeConfig())
    table.apply(gateway_pb2.Policy(keys=[_key("gone", "ck_gone", revoked_unix_ms=1)]))
    assert _refusal(table, _headers()).status == 401


def test_static_keys_and_a_pending_policy() -> None:
    """Static api_keys are the default team's and work; other keys get 503 until policy comes."""
    table = KeyTable(EdgeConfig(api_keys=(Secret("sk-static"),)))
    table.wait_for_policy()
    identity = table.check(_bearer("sk-static"))
    assert identity is not None and identity.team == "default"
    assert identity.key_id.startswith("static-") and "sk-static" not in identity.key_id
    pending = _refusal(table, _bearer("sk-virtual"))
    assert pending.status == 503 and pending.code == "policy_not_loaded"
    table.apply(gateway_pb2.Policy(keys=[_key("sk-virtual", "ck_v")]))
    assert table.check(_bearer("sk-virtual")) is not None
    assert table.check(_bearer("sk-static")) is not None


async def test_a_restarted_edge_enforces_the_persisted_policy(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    """A restarted edge, control plane gone, enforces persisted keys; the file holds digests."""
    address = f"127.0.0.1:{free_port()}"
    ready = asyncio.Event()
    task = asyncio.create_task(
        controlplane.serve(ControlPlaneConfig(listen=address, store="memory"), ready=ready)
    )
    state = str(tmp_path / "state")
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with h.admin(address) as admin:
            await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
            kept = await admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t"))
            dropped = await admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t"))
            await admin.RevokeKey(gateway_pb2.RevokeKeyRequest(id=dropped.key.id))
        first = await start_edge(None, controlplane=(address,), state_dir=state)
        version = await policy_version(address)

        def persisted() -> bool:  # applied first, then written to disk
            path = Path(state) / "policy.pb"
            return (
                path.exists()
                and gateway_pb2.Policy.FromString(path.read_bytes()).version >= version
            )

        await eventually(persisted)
        await first.stop()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    saved = (Path(state) / "policy.pb").read_bytes()
    assert kept.secret.encode() not in saved
    assert (Path(state) / "policy.pb").stat().st_mode & 0o077 == 0
    again = await start_edge(None, controlplane=(address,), state_dir=state)
    info = await again.readyz()
    assert info["policy_version"] == version and info["keys"] == 2
    await again.client(kept.secret).models.list()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        await again.client(dropped.secret).models.list()
    with pytest.raises(openai.AuthenticationError):
        await again.client("sk-corral-unknown").models.list()


def test_require_keys_from_flag_and_file(tmp_path: Path) -> None:
    """`corral edge --require-keys` and `edge.identity.require_keys` in the file set it."""
    from corral.cli import build_parser, config_from_args

    args = build_parser().parse_args(["edge", "--require-keys"])
    assert config_from_args(args, {}).edge.identity.require_keys
    path = tmp_path / "c.yaml"
    path.write_text("edge:\n  identity:\n    require_keys: true\n")
    args = build_parser().parse_args(["edge", "--config", str(path)])
    assert config_from_args(args, {}).edge.identity.require_keys
    args = build_parser().parse_args(["edge"])
    assert not config_from_args(args, {}).edge.identity.require_keys


def test_the_bench_policy_is_one_the_edge_accepts() -> None:
    """bench/policy_server.py's keys pass by their secrets (real lookups for bench), no others."""
    from bench.policy_server import policy, secret

    table = KeyTable(EdgeConfig())
    table.apply(policy(50))
    found = table.check(_bearer(secret(25)))
    assert found is not None and found.key_id == f"ck_{25:012x}" and found.team == "bench"
    assert _refusal(table, _bearer(secret(50))).status == 401


async def test_a_replica_without_policies_does_not_wipe_the_keys_held(
    start_edge: StartEdge,
    snapshots: SnapshotServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """UNIMPLEMENTED for the policy stream keeps a held policy: keys stay required, none saved."""
    state = tmp_path / "state"
    state.mkdir()
    gone = _key("sk-gone", "ck_gone", revoked_unix_ms=1)
    held = gateway_pb2.Policy(version=50, cluster_id="c", keys=[_key("sk-good", "ck_g"), gone])
    save_policy(str(state), held)
    snapshots.publish(snapshot(1, []))
    # The snapshot server serves RoutingService only, as a replica from before policies.
    edge = await start_edge(snapshots, state_dir=str(state))
    await edge.wait_version(1)

    async def refused() -> bool:
        return "policy stream from" in caplog.text and "UNIMPLEMENTED" in caplog.text

    await eventually(refused)
    info = await edge.readyz()
    assert info["policy_version"] == 50 and info["keys"] == 2
    for key in ("sk-nobody", "sk-gone"):
        with pytest.raises(openai.AuthenticationError):
            await edge.client(key).models.list()
    await edge.client("sk-good").models.list()
    assert load_policy(str(state)) == held
