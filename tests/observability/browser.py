"""A real browser for dashboard tests: Debian's chromium driven by Playwright's Python API.

Playwright's own browser downloads are never used (executable_path). A missing chromium is
a failure that says how to install it, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, async_playwright

CHROMIUM = os.environ.get("CORRAL_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Screenshots and other files a test leaves for people to look at (gitignored).
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def chromium_path() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        raise AssertionError(
            f"chromium not found at {CHROMIUM}: install Debian's chromium package "
            "(./dev test does: apt-get install chromium)"
        )
    return path


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), args=ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()
