"""tests/browser: the live page in a real browser, Debian's chromium driven by
Playwright (its Python package; Playwright's own browser download is never used).

``scripts/browser-tools`` installs chromium where it can (root with apt-get; ``make
test`` runs it). Where it could have and chromium is still missing, the tests fail;
where it cannot (no root, no apt-get), they skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from soundstream import config

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
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(
            f"{CHROMIUM} is missing although {INSTALLER} could install it here (root, "
            f"apt-get): run {INSTALLER} (make test does) and look at what it says",
            pytrace=False,
        )
    pytest.skip(
        f"{CHROMIUM} is missing and {INSTALLER} can only install it as root on Debian: "
        "run it as root, or install Debian's chromium package"
    )


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


@pytest.fixture
async def topology(
    settings: config.Settings, amqp_names: dict[str, str]
) -> AsyncIterator[config.Settings]:
    """``settings`` whose exchanges and queues are deleted after the test."""
    from support import delete_topology

    yield settings
    await delete_topology(settings.amqp_url, amqp_names)
