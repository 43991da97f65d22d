"""Python guardrail hooks the tests load by `module:function`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

CALLS: list[dict[str, str]] = []
# What holds `stuck` (set by the test that calls it, once it is done with it).
RELEASE = threading.Event()


def names(texts: list[str], context: dict[str, str]) -> dict[str, Any]:
    """Finds the word "Zebediah" (a name no built-in detector knows)."""
    CALLS.append(context)
    findings = []
    for index, text in enumerate(texts):
        at = text.find("Zebediah")
        if at >= 0:
            findings.append({"index": index, "start": at, "end": at + 8, "kind": "PERSON"})
    return {"findings": findings}


async def refuse_secrets(texts: list[str], context: dict[str, str]) -> dict[str, Any] | None:
    """Blocks any text mentioning "project orion"."""
    if any("project orion" in t.lower() for t in texts):
        return {"block": "Project Orion is confidential."}
    return None


async def slow(texts: list[str], context: dict[str, str]) -> None:
    await asyncio.sleep(30)


def broken(texts: list[str], context: dict[str, str]) -> Any:
    raise RuntimeError("site bug")


def stuck(texts: list[str], context: dict[str, str]) -> None:
    """A plain function that blocks (a site's slow client library) until released."""
    RELEASE.wait(30)
