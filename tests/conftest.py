"""Shared fixtures: every test that touches PostgreSQL or RabbitMQ gets its own
database or its own exchange/queue names, so tests run in any order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from testenv import AMQP_URL, PG_ADMIN_URL, database_url, delete_topology, unique

from soundstream import config
from soundstream.store.migrate import migrate

# Shared, noisy machines: judge properties, not how fast examples are drawn.
hypothesis_settings.register_profile(
    "soundstream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("soundstream")


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh, migrated database; its URL. Dropped afterwards."""
    name = unique("soundstream_test")
    url = database_url(name)
    await migrate(url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def amqp_names() -> dict[str, str]:
    """Exchange and queue names of this test only (the broker's default vhost)."""
    tag = unique("t")
    return {
        "audio_exchange": f"{tag}.audio",
        "queue": f"{tag}.features",
        "dead_exchange": f"{tag}.dead",
        "dead_queue": f"{tag}.dead",
    }


@pytest.fixture
def settings(database: str, amqp_names: dict[str, str]) -> config.Settings:
    """Settings for an isolated service: own database, own AMQP names, a free port."""
    return config.load(
        {},
        database_url=database,
        amqp_url=AMQP_URL,
        http_host="127.0.0.1",
        http_port=0,
        workers=1,
        batch_max_wait_ms=50,
        drain_timeout_s=10.0,
        log_format="console",
        **amqp_names,
    )


@pytest.fixture
async def topology(
    settings: config.Settings, amqp_names: dict[str, str]
) -> AsyncIterator[config.Settings]:
    """``settings`` whose exchanges and queues are deleted after the test."""
    yield settings
    await delete_topology(settings.amqp_url, amqp_names)
