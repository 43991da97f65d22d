"""Shared pieces of the provider tests: a test CA, provider backends as the control plane
builds them, and the edge config that trusts the CA and holds the keys."""

from __future__ import annotations

from typing import Any

from controlplane import hosted
from corral.config import Secret
from corral.v1 import providers_pb2, types_pb2
from tests.fakes.hosted import HostedFake

KEYS = {
    "openai": "sk-test-openai-7f3a9c1e",
    "anthropic": "sk-ant-test-2b8d4e6f",
    "gemini": "AIzaTestGemini5c7e9a1b",
    "azure": "azure-test-key-0d2f4a6c",
}
TYPES = {name: hosted.TYPES[name] for name in KEYS}


def provider_backend(fake: HostedFake, *, context: int = 0, **fields: Any) -> types_pb2.Backend:
    """The snapshot entry the control plane makes of this fake declared as a provider."""
    provider = providers_pb2.Provider(
        name=fake.name,
        type=TYPES[fake.kind],
        base_url=fake.base_url,
        credential=f"{fake.kind}-key",
        models=[providers_pb2.ProviderModel(id=m, context_length=context) for m in fake.models],
        priority=-100,
        **fields,
    )
    provider = hosted.normalise(provider)
    backend = hosted.backend_of(fake.name, provider.SerializeToString())
    assert backend is not None
    return backend


def edge_settings(ca_file: str | None, *kinds: str) -> dict[str, Any]:
    """EdgeConfig overrides: the test CA trusted, the keys of these provider kinds."""
    creds = tuple((f"{k}-key", Secret(KEYS[k])) for k in kinds)
    return {"extra_ca_file": ca_file, "credentials": creds}
