"""Every server-type detector against every fake: each recognises its own server and no other."""

from __future__ import annotations

import pytest

from agent.detect import DETECTORS, ask, decide
from agent.servers import PROBES
from corral.config import BACKEND_TYPES
from tests.agent.conftest import ClientFactory
from tests.fakes import KINDS

# The generic OpenAI detector accepts any /v1/models list by design (it is asked last).
GENERIC = "openai"


def test_every_probe_type_has_a_detector_and_a_config_choice() -> None:
    """agent/servers, the detectors and the configuration's choices name the same types."""
    assert {kind for kind, _ in DETECTORS} == set(PROBES)
    assert ("auto", *PROBES) == BACKEND_TYPES
    assert set(KINDS) == set(PROBES)


@pytest.mark.parametrize("kind", KINDS)
async def test_no_detector_claims_another_servers_fake(
    kind: str, fake_server, backend_client: ClientFactory
) -> None:
    """Run every detector on one fake's answers: only its own type's detector accepts it."""
    fake = await fake_server(kind, models=["some/model"])
    answers = await ask(backend_client(fake.url))
    accepted = {name for name, detector in DETECTORS if detector(answers) is not None}
    assert kind in accepted, (kind, accepted)
    assert accepted - {kind, GENERIC} == set(), f"{kind}'s fake is also claimed by {accepted}"
    assert decide(answers)[0] == kind


@pytest.mark.parametrize("kind", KINDS)
async def test_detection_holds_while_failing(
    kind: str, fake_server, backend_client: ClientFactory
) -> None:
    """A server answering 500 everywhere is never taken for another server type."""
    fake = await fake_server(kind, models=["some/model"])
    fake.mode = "error"
    found, _ = decide(await ask(backend_client(fake.url)))
    assert found in (None, kind), (kind, found)
