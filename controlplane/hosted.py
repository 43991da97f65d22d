"""Hosted providers and fallback chains in the control plane (issue 14).

Providers are stored under ``routing/providers/<name>`` and appear in every snapshot as
backends of their own (no agent; the credential only as a REFERENCE); chains are stored under
``routing/fallbacks/<model>`` and travel in the snapshot as they are. Health of a provider is
passive, judged by each edge (errors, 429 with Retry-After, timeouts: ejection with backoff).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Final

from google.protobuf.message import DecodeError

from controlplane import seeding
from controlplane.errors import InvalidArgumentError
from controlplane.keys import KeyLayout
from controlplane.store.base import Store
from controlplane.validation import MAX_MODELS, check_name, check_text, check_url
from corral.config import FallbackConfig, ProviderConfig
from corral.credentials import valid_reference
from corral.v1 import providers_pb2, types_pb2

log = logging.getLogger(__name__)

TYPES: Final = {
    "openai": providers_pb2.PROVIDER_TYPE_OPENAI,
    "anthropic": providers_pb2.PROVIDER_TYPE_ANTHROPIC,
    "gemini": providers_pb2.PROVIDER_TYPE_GEMINI,
    "azure": providers_pb2.PROVIDER_TYPE_AZURE,
    "openai-compatible": providers_pb2.PROVIDER_TYPE_OPENAI_COMPATIBLE,
}
TYPE_NAMES: Final = {v: k for k, v in TYPES.items()}
# The public endpoint of each type, as its own SDK takes it (azure and openai-compatible
# have none: the operator's resource or vendor decides).
DEFAULT_BASE_URLS: Final = {
    providers_pb2.PROVIDER_TYPE_OPENAI: "https://api.openai.com/v1",
    providers_pb2.PROVIDER_TYPE_ANTHROPIC: "https://api.anthropic.com",
    providers_pb2.PROVIDER_TYPE_GEMINI: "https://generativelanguage.googleapis.com/v1beta/openai",
}
AZURE_API_VERSION: Final = "2024-10-21"
# Failure kinds a chain may move on after (edge/providers/fallbacks.py knows them too).
CONDITIONS: Final = frozenset(
    ("unhealthy", "full", "connect", "timeout", "read", "empty", "5xx", "429", "4xx")
)
MAX_TARGETS: Final = 32
_HOSTED_REASON: Final = "hosted provider: health judged passively by each edge"


def backend_of(name: str, raw: bytes, probed: bytes | None = None) -> types_pb2.Backend | None:
    """The Backend a stored provider stands for in snapshots (None: undecodable); `probed`:
    the optional probe's verdict (a BackendStatus with health and reason)."""
    provider = providers_pb2.Provider()
    try:
        provider.ParseFromString(raw)
    except DecodeError:
        log.warning("provider %r: undecodable record in the store; left out", name)
        return None
    capabilities = [types_pb2.CAPABILITY_COMPLETIONS, types_pb2.CAPABILITY_EMBEDDINGS]
    if provider.type == providers_pb2.PROVIDER_TYPE_ANTHROPIC:
        capabilities = [types_pb2.CAPABILITY_ANTHROPIC_MESSAGES]
    health, reason = types_pb2.HEALTH_STATE_HEALTHY, _HOSTED_REASON
    if probed is not None:
        with contextlib.suppress(DecodeError):
            verdict = types_pb2.BackendStatus.FromString(probed)
            if verdict.health:
                health, reason = verdict.health, verdict.reason
    return types_pb2.Backend(
        spec=types_pb2.BackendSpec(
            name=name,
            url=provider.base_url,
            type=types_pb2.BACKEND_TYPE_OPENAI,
            priority=provider.priority,
            max_concurrency=provider.max_concurrency,
            credential=provider.credential,
            provider=provider.type,
            api_version=provider.api_version,
            labels={"provider": TYPE_NAMES.get(provider.type, "unknown")},
        ),
        status=types_pb2.BackendStatus(
            health=health,
            reason=reason,
            models=[
                types_pb2.ModelInfo(id=m.id, loaded=True, context_length=m.context_length)
                for m in provider.models
            ],
            capabilities=capabilities,
        ),
    )


def decode_all(records: Mapping[str, bytes]) -> list[providers_pb2.FallbackChain]:
    """The stored chains, sorted by model (undecodable ones left out)."""
    out: list[providers_pb2.FallbackChain] = []
    for model, raw in sorted(records.items()):
        chain = providers_pb2.FallbackChain()
        try:
            chain.ParseFromString(raw)
        except DecodeError:
            log.warning("fallback chain %r: undecodable record in the store; left out", model)
            continue
        chain.model = model
        out.append(chain)
    return out


def decode_providers(records: Mapping[str, bytes]) -> list[providers_pb2.Provider]:
    out: list[providers_pb2.Provider] = []
    for name, raw in sorted(records.items()):
        provider = providers_pb2.Provider()
        try:
            provider.ParseFromString(raw)
        except DecodeError:
            continue
        provider.name = name
        out.append(provider)
    return out


def normalise(provider: providers_pb2.Provider) -> providers_pb2.Provider:
    """Checked, with defaults filled in (base URL of the type, Azure's api-version)."""
    check_name(provider.name, "provider name")
    if provider.type not in TYPE_NAMES:
        raise InvalidArgumentError(
            f"provider {provider.name!r}: type must be one of {', '.join(TYPES)}"
        )
    out = providers_pb2.Provider()
    out.CopyFrom(provider)
    if not out.base_url:
        default = DEFAULT_BASE_URLS.get(out.type)
        if default is None:
            raise InvalidArgumentError(
                f"provider {provider.name!r}: a {TYPE_NAMES[out.type]} provider needs --base-url"
            )
        out.base_url = default
    out.base_url = out.base_url.rstrip("/")
    check_url(out.base_url)
    if not out.base_url.startswith("https://"):
        log.warning("provider %s: %s is not https", out.name, out.base_url)
    if not out.credential or not valid_reference(out.credential):
        raise InvalidArgumentError(
            f"provider {provider.name!r}: --credential must be a reference (a name such as "
            "openai-prod that edges resolve from CORRAL_CREDENTIAL_<REF> or credentials_dir), "
            "never the key itself"
        )
    if out.type == providers_pb2.PROVIDER_TYPE_AZURE and not out.api_version:
        out.api_version = AZURE_API_VERSION
    if len(out.models) > MAX_MODELS:
        raise InvalidArgumentError(f"provider {provider.name!r}: more than {MAX_MODELS} models")
    for model in out.models:
        check_text(model.id, f"provider {provider.name!r} model", 512)
        if not model.id:
            raise InvalidArgumentError(f"provider {provider.name!r}: an empty model id")
    return out


def check_chain(chain: providers_pb2.FallbackChain) -> None:
    if not chain.model:
        raise InvalidArgumentError("fallback chain: the model is empty")
    check_text(chain.model, "fallback model", 512)
    if not chain.targets or len(chain.targets) > MAX_TARGETS:
        raise InvalidArgumentError(
            f"fallback chain for {chain.model!r}: give 1..{MAX_TARGETS} targets"
        )
    for target in chain.targets:
        if not target or target == chain.model:
            raise InvalidArgumentError(
                f"fallback chain for {chain.model!r}: empty target, or the model itself"
            )
        check_text(target, "fallback target", 512)
    unknown = sorted(set(chain.on) - CONDITIONS)
    if unknown:
        raise InvalidArgumentError(
            f"fallback chain for {chain.model!r}: unknown condition {unknown[0]!r} "
            f"(known: {', '.join(sorted(CONDITIONS))})"
        )
    if not 0 <= chain.queue_wait_seconds <= 3600:
        raise InvalidArgumentError("fallback queue_wait_seconds must be within 0..3600")


def from_config(config: ProviderConfig) -> providers_pb2.Provider:
    if config.type not in TYPES:
        raise InvalidArgumentError(
            f"provider {config.name!r}: type {config.type!r} is not one of {', '.join(TYPES)}"
        )
    contexts: dict[str, int] = {}
    for model, tokens in config.context:
        try:
            contexts[model] = int(tokens)
        except ValueError:
            raise InvalidArgumentError(
                f"provider {config.name!r}: context of {model!r} must be a number of tokens"
            ) from None
    return normalise(
        providers_pb2.Provider(
            name=config.name,
            type=TYPES[config.type],
            base_url=config.base_url,
            credential=config.credential,
            models=[
                providers_pb2.ProviderModel(id=m, context_length=contexts.get(m, 0))
                for m in config.models
            ],
            api_version=config.api_version,
            priority=config.priority,
            max_concurrency=config.max_concurrency,
        )
    )


def chain_from_config(config: FallbackConfig) -> providers_pb2.FallbackChain:
    chain = providers_pb2.FallbackChain(
        model=config.model,
        targets=list(config.targets),
        on=list(config.on),
        queue_wait_seconds=config.queue_wait_seconds,
    )
    check_chain(chain)
    return chain


async def seed(
    store: Store,
    layout: KeyLayout,
    providers: tuple[ProviderConfig, ...],
    fallbacks: tuple[FallbackConfig, ...],
) -> None:
    """Write configured providers and chains where the store lacks them or differs
    (idempotent, like configured aliases; ones set through AdminService stay)."""
    records = [(layout.provider(p.name), from_config(p).SerializeToString()) for p in providers]
    records += [
        (layout.fallback(f.model), chain_from_config(f).SerializeToString()) for f in fallbacks
    ]
    said = "{} set from configuration"
    await seeding.seed(
        store,
        ((key, value, said.format(key.decode(errors="replace"))) for key, value in records),
        "providers",
    )
