"""Providers and fallback chains through configuration, AdminService and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral import cli
from corral.config import FallbackConfig, ProviderConfig, ProviderProbeConfig
from corral.v1 import admin_pb2, providers_pb2, types_pb2
from tests.controlplane import harness as h
from tests.fakes.hosted import HostedFake
from tests.fakes.tls import make_ca


@pytest.fixture
async def cp() -> AsyncIterator[str]:
    cfg = h.config(
        providers=(
            ProviderConfig(
                name="openai",
                type="openai",
                credential="openai-prod",
                models=("gpt-4.1",),
                context=(("gpt-4.1", "1047576"),),
            ),
        ),
        fallbacks=(FallbackConfig(model="llama-70b", targets=("openai/gpt-4.1",)),),
    )
    async with h.running(cfg) as address:
        yield address


async def corral(*argv: str) -> tuple[int, str, str]:
    """Run the `corral` CLI in a thread; its exit code, stdout and stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli.main(list(argv))

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_providers_and_chains_reach_snapshots_as_references(cp: str) -> None:
    """Seeded and CLI-added providers are snapshot backends carrying only the reference."""
    watcher = h.SnapshotWatcher(cp)
    code, _, err = await corral(
        "providers", "add", "claude", "--type", "anthropic", "--credential", "anthropic-key",
        "--models", "claude-sonnet-4-5", "--controlplane", cp,
    )  # fmt: skip
    assert code == 0, err
    code, _, err = await corral(
        "fallbacks", "set", "llama-70b", "llama-70b-q4", "claude/claude-sonnet-4-5",
        "--on", "connect,5xx,429", "--controlplane", cp,
    )  # fmt: skip
    assert code == 0, err
    snapshot = await watcher.until(
        lambda s: (
            {b.spec.name for b in s.backends} == {"claude", "openai"}
            and any(len(c.targets) == 2 for c in s.fallbacks)
        )
    )
    by_name = {b.spec.name: b for b in snapshot.backends}
    claude, openai = by_name["claude"], by_name["openai"]
    assert claude.spec.provider == providers_pb2.PROVIDER_TYPE_ANTHROPIC
    assert claude.spec.url == "https://api.anthropic.com"
    assert claude.spec.credential == "anthropic-key"
    assert types_pb2.CAPABILITY_ANTHROPIC_MESSAGES in claude.status.capabilities
    assert openai.spec.url == "https://api.openai.com/v1"
    assert [(m.id, m.context_length) for m in openai.status.models] == [("gpt-4.1", 1047576)]
    assert openai.status.health == types_pb2.HEALTH_STATE_HEALTHY
    (chain,) = snapshot.fallbacks
    assert (chain.model, list(chain.targets), list(chain.on)) == (
        "llama-70b",
        ["llama-70b-q4", "claude/claude-sonnet-4-5"],
        ["connect", "5xx", "429"],
    )
    code, out, _ = await corral("providers", "list", "--controlplane", cp)
    assert "claude\tanthropic\thttps://api.anthropic.com\tcredential=anthropic-key" in out
    code, out, _ = await corral("status", "--controlplane", cp)
    assert code == 0
    assert "hosted:anthropic" in out and "hosted:openai" in out
    code, out, _ = await corral("fallbacks", "list", "--controlplane", cp)
    assert out.strip() == "llama-70b -> llama-70b-q4 -> claude/claude-sonnet-4-5"
    code, _, _ = await corral("providers", "remove", "claude", "--controlplane", cp)
    assert code == 0
    await watcher.until(lambda s: {b.spec.name for b in s.backends} == {"openai"})
    await watcher.close()


async def test_bad_declarations_are_refused_clearly(cp: str) -> None:
    """A pasted key as the reference, a missing base URL, an unknown condition: refused."""
    code, _, err = await corral(
        "providers", "add", "x", "--type", "openai", "--credential", "sk-proj-abc123",
        "--models", "m", "--controlplane", cp,
    )  # fmt: skip
    assert code == 1 and "never the key itself" in err and "INVALID_ARGUMENT" in err
    code, _, err = await corral(
        "providers", "add", "az", "--type", "azure", "--credential", "azure-key",
        "--models", "gpt-4o", "--controlplane", cp,
    )  # fmt: skip
    assert code == 1 and "needs --base-url" in err
    code, _, err = await corral(
        "providers", "add", "x", "--type", "openai", "--credential", "nowhere",
        "--controlplane", cp,
    )  # fmt: skip
    assert code == 2 and "CORRAL_CREDENTIAL_NOWHERE" in err and "--models" in err
    code, _, err = await corral(
        "fallbacks", "set", "m", "openai/gpt-4.1", "--on", "sometimes", "--controlplane", cp
    )
    assert code == 1 and "unknown condition 'sometimes'" in err
    code, _, err = await corral("providers", "remove", "nope", "--controlplane", cp)
    assert code == 1 and "NOT_FOUND" in err


async def test_the_optional_probe_shows_provider_health(tmp_path: Path) -> None:
    """Probe on: a reachable provider is healthy, a stopped one not; off, health stays passive."""
    ca = make_ca(tmp_path / "ca")
    fake = await HostedFake("openai", key="sk-k", models=["gpt-4.1"], ca=ca).start()
    probe = ProviderProbeConfig(interval_seconds=0.1, timeout_seconds=2, extra_ca_file=ca.ca_file)
    declared = ProviderConfig(
        name="openai", type="openai", credential="k", base_url=fake.base_url, models=("gpt-4.1",)
    )
    cfg = h.config(providers=(declared,), provider_probe=probe)
    try:
        async with h.running(cfg) as address:
            watcher = h.SnapshotWatcher(address)

            def health(s: types_pb2.Snapshot) -> tuple[int, str]:
                (backend,) = s.backends
                return backend.status.health, backend.status.reason

            snap = await watcher.until(lambda s: "reachable (HTTP 401)" in health(s)[1])
            assert health(snap)[0] == types_pb2.HEALTH_STATE_HEALTHY
            assert fake.requests[-1].path == "/v1/models"
            assert "Authorization" not in fake.requests[-1].headers
            await fake.stop()
            snap = await watcher.until(lambda s: health(s)[0] == types_pb2.HEALTH_STATE_UNHEALTHY)
            _, out, _ = await corral("status", "--controlplane", address)
            assert "unhealthy" in out and f"openai: probe {fake.base_url}/models" in out
            await watcher.close()
    finally:
        await fake.stop()


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_models_are_discovered_with_the_credential(
    kind: str, cp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`providers add` without --models lists them with the key resolved in the CLI's env."""
    ca = make_ca(tmp_path / "ca")
    models = ["model-a", "model-b"]
    async with HostedFake(kind, key="k-123", models=models, ca=ca) as fake:
        monkeypatch.setenv("CORRAL_CREDENTIAL_DISCOVERY", "k-123")
        code, out, err = await corral(
            "providers", "add", "found", "--type", kind, "--base-url", fake.base_url,
            "--credential", "discovery", "--extra-ca-file", ca.ca_file, "--controlplane", cp,
        )  # fmt: skip
        assert code == 0, err
        assert '"id": "model-a"' in out and '"id": "model-b"' in out
        assert "k-123" not in out
        seen = fake.requests[-1].headers
        assert seen.get("x-api-key", seen.get("Authorization", "")).endswith("k-123")
        monkeypatch.setenv("CORRAL_CREDENTIAL_DISCOVERY", "wrong")
        code, _, err = await corral(
            "providers", "add", "found", "--type", kind, "--base-url", fake.base_url,
            "--credential", "discovery", "--extra-ca-file", ca.ca_file, "--controlplane", cp,
        )  # fmt: skip
        assert code == 1 and "listing models" in err and "wrong" not in err


async def test_a_provider_can_be_drained_like_any_backend(cp: str) -> None:
    """DrainBackend on a provider: drained in snapshots until undrained."""
    watcher = h.SnapshotWatcher(cp)
    async with h.admin(cp) as admin:
        await admin.DrainBackend(admin_pb2.DrainBackendRequest(name="openai", reason="budget"))
        # Listed as drained, not dropped (an empty list would pass an all() here).
        await watcher.until(
            lambda s: (
                [(b.spec.name, b.drained) for b in s.backends if b.spec.provider]
                == [("openai", True)]
            )
        )
        await admin.UndrainBackend(admin_pb2.UndrainBackendRequest(name="openai"))
        await watcher.until(
            lambda s: (
                [(b.spec.name, b.drained) for b in s.backends if b.spec.provider]
                == [("openai", False)]
            )
        )
    await watcher.close()
