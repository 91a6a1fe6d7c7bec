"""The service keeps its store in shape by itself: the summary deltas folded, day
partitions made ahead, and with a retention setting, whole old days dropped."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import asyncpg
from support import channel, publish_series, running, wait_for
from test_store import extracted

from soundstream import config
from soundstream.store import upkeep
from soundstream.store.write import init_connection, write_batch

DAY_NS = 86_400 * 10**9


async def test_the_service_folds_deltas_makes_days_and_drops_expired_ones(
    topology: config.Settings,
) -> None:
    s = config.replace(topology, retention_days=3)
    today = datetime.now(UTC).date()
    old_day = today - timedelta(days=10)
    old_ns = int(datetime(old_day.year, old_day.month, old_day.day, tzinfo=UTC).timestamp()) * 10**9
    conn = await asyncpg.connect(s.database_url)
    try:
        await init_connection(conn)
        await upkeep.ensure_partitions(conn, [old_day])
        old = [extracted("keeper", seq, start_ns=old_ns + seq * 10**9) for seq in range(3)]
        await write_batch(conn, old)
        async with running(s) as service, channel(s.amqp_url) as ch:
            # Today's chunks, which retention keeps.
            now_ns = (time.time_ns() // 10**9 - 60) * 10**9
            await publish_series(ch, s.audio_exchange, "keeper", range(3, 6), start_ns=now_ns)
            day = upkeep.partition_name(datetime.fromtimestamp(now_ns // 10**9, UTC).date())

            async def settled() -> bool:
                tables = {
                    r["relname"]
                    for r in await conn.fetch(
                        "SELECT relname FROM pg_class WHERE relname LIKE 'chunk_frames_2%'"
                    )
                }
                deltas = await conn.fetchval("SELECT count(*) FROM sensor_deltas")
                chunks = await conn.fetchval("SELECT count(*) FROM chunks")
                today_rows = await conn.fetchval(
                    f"SELECT count(*) FROM {day}" if day in tables else "SELECT 0"
                )
                return (
                    today_rows == 3
                    and upkeep.partition_name(old_day) not in tables
                    and upkeep.partition_name(today + timedelta(days=2)) in tables
                    and deltas == 0
                    and chunks == 3
                )

            await wait_for(settled, within=30)
            status = (await service.get("/v1/sensors/keeper")).json()
        assert status["chunks"] == 3 and status["last_seq"] == 5
        assert status["missing_seq"] == []
        assert await conn.fetchval("SELECT count(*) FROM sensors") == 1
    finally:
        await conn.close()


async def test_upkeep_that_fails_does_not_stop_ingest(topology: config.Settings) -> None:
    # A table of another owner squats on tomorrow's partition name: creating the
    # days fails every time, and chunks go on being stored (in the default partition).
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    conn = await asyncpg.connect(topology.database_url)
    try:
        await conn.execute(f"CREATE TABLE {upkeep.partition_name(tomorrow)} (x int)")
        async with running(topology) as service, channel(topology.amqp_url) as ch:
            now_ns = (time.time_ns() // 10**9 - 60) * 10**9
            await publish_series(ch, topology.audio_exchange, "onward", range(4), start_ns=now_ns)

            async def stored() -> bool:
                return await conn.fetchval("SELECT count(*) FROM chunks") == 4

            await wait_for(stored, within=30)
            assert (await service.get("/readyz")).status_code == 200
        assert await conn.fetchval("SELECT count(*) FROM chunk_frames_default") == 4
    finally:
        await conn.close()
