"""Fixtures of the provider tests: the edge fixtures, shared; a test CA and two hosted
fakes (OpenAI and Anthropic) behind it."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.edge.conftest import http, snapshots, start_edge
from tests.fakes.hosted import HostedFake
from tests.fakes.tls import CertAuthority, make_ca
from tests.providers.helpers import KEYS

__all__ = ["http", "snapshots", "start_edge"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(Path(tmp_path_factory.mktemp("ca")))


@pytest.fixture
async def gpt(ca: CertAuthority) -> AsyncIterator[HostedFake]:
    fake = await HostedFake("openai", key=KEYS["openai"], models=["gpt-4.1-mini"], ca=ca).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def claude(ca: CertAuthority) -> AsyncIterator[HostedFake]:
    models = ["claude-sonnet-4-5"]
    fake = await HostedFake("anthropic", key=KEYS["anthropic"], models=models, ca=ca).start()
    yield fake
    await fake.stop()
