"""Fixtures for tests that run against the real broker and database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from soundstream.store.write import init_connection


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database, min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the writer has it: integer-microsecond timestamps, staging table."""
    connection = await asyncpg.connect(database)
    await init_connection(connection)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def api(database: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool as the API has it: plain codecs."""
    async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
        yield pool
