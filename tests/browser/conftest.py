"""tests/browser: the live page in a real browser, Debian's chromium driven by
Playwright (its Python package; Playwright's own browser download is never used).

``scripts/browser-tools`` installs chromium where it can (root with apt-get; ``make
test`` runs it). Where it could have and chromium is still missing, the tests fail;
where it cannot (no root, no apt-get), they skip, saying so.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from testenv import installed_tool

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS / "integration") not in sys.path:
    sys.path.append(str(_TESTS / "integration"))

CHROMIUM = "/usr/bin/chromium"
INSTALLER = "scripts/browser-tools"
# What works here: no sandbox as root, no GPU, and none of the background traffic a
# closed network refuses.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium() -> str:
    return installed_tool(CHROMIUM, INSTALLER, "chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()
