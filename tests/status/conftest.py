"""The `corral status` tests' fixture: a plain-text control plane for one test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.status.support import ControlPlane, running_controlplane


@pytest.fixture
async def controlplane() -> AsyncIterator[ControlPlane]:
    """A plain-text control plane for one test."""
    async with running_controlplane() as cp:
        yield cp
