"""Migrations: versioned, applied once, safe to run twice and concurrently."""

from __future__ import annotations

import asyncio
from datetime import timedelta

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


async def test_frames_stored_one_row_each_move_into_chunk_rows() -> None:
    """A database of the first layout (one row per frame) keeps every frame, exactly."""
    name = unique("soundstream_migrate")
    url = database_url(name)
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate(url, until=1)  # the first layout, one row per frame
            # Two sensors, three chunks; one chunk without frames; today's and a year-old day.
            await conn.execute(
                """
                INSERT INTO chunks
                SELECT s, q, now() - q * interval '200 days', 16000, 16000, 3, now()
                FROM unnest(ARRAY['a', 'a', 'b']) WITH ORDINALITY AS c(s, q);
                INSERT INTO chunks VALUES ('b', 9, now(), 16000, 100, 0, now());
                INSERT INTO frames
                SELECT c.sensor_id, c.start_ts + i * interval '32 ms', c.seq, i, i + 0.5, 3, 4, 5,
                       6, 7, ARRAY[i, -i, c.seq]::real[], ARRAY[c.seq * 10 + i]::real[]
                FROM chunks c, generate_series(0, 2) AS i WHERE c.n_frames > 0;
                INSERT INTO sensors
                SELECT sensor_id, min(ts), max(ts), count(DISTINCT seq), count(*), max(seq), now()
                FROM frames GROUP BY sensor_id
                """
            )
            before = [tuple(r) for r in await conn.fetch("SELECT * FROM frames ORDER BY 1, 2")]
            assert len(before) == 9
            assert await migrate(url) == [m.version for m in available()[1:]]
            after = [tuple(r) for r in await conn.fetch("SELECT * FROM frames ORDER BY 1, 2")]
            assert after == before
            assert await conn.fetchval("SELECT count(*) FROM chunk_frames") == 3
            assert await conn.fetchval("SELECT count(*) FROM chunk_frames_default") == 0
            spans = await conn.fetch("SELECT first_ts, last_ts FROM chunks WHERE n_frames > 0")
            assert all(r["last_ts"] - r["first_ts"] == timedelta(milliseconds=64) for r in spans)
            assert await conn.fetchval("SELECT longest FROM frame_span") == timedelta(
                milliseconds=64
            )
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
