"""Fixtures for tests that run the service against the real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support import delete_topology

from soundstream import config


@pytest.fixture
async def topology(
    settings: config.Settings, amqp_names: dict[str, str]
) -> AsyncIterator[config.Settings]:
    """``settings`` whose exchanges and queues are deleted after the test."""
    yield settings
    await delete_topology(settings.amqp_url, amqp_names)
