"""Providers and fallback chains through configuration, AdminService and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from corral import cli
from corral.config import FallbackConfig, ProviderConfig
from corral.v1 import providers_pb2, types_pb2
from tests.controlplane import harness as h


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
