"""Migrations: versioned, applied once, safe to run twice and concurrently."""

from __future__ import annotations

import asyncio

import asyncpg
from testenv import PG_ADMIN_URL, database_url, unique

from soundstream.store.migrate import available, migrate, pending


async def test_concurrent_runs_apply_each_migration_once() -> None:
    name = unique("soundstream_migrate")
    url = database_url(name)
    try:
        results = await asyncio.gather(*(migrate(url) for _ in range(4)))
        versions = [m.version for m in available()]
        assert sorted(v for applied in results for v in applied) == versions
        assert await migrate(url) == []
        assert await pending(url) == []
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == versions
            assert await conn.fetchval("SELECT to_regclass('frames') IS NOT NULL")
        finally:
            await conn.close()
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in available()]
    assert versions == list(range(1, len(versions) + 1))
