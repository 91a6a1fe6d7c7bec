"""Missing seqs from runs of received seqs (``seq_runs``): carried over from the
chunks already stored, fed by every statement that adds chunks, folded by upkeep,
cut by retention, and read without touching a sensor's chunks. The reference is
the window query that answered ``missing_seq`` before, walking every chunk."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from support import START_NS
from test_store import extracted
from testenv import PG_ADMIN_URL, database_url, unique

from soundstream.core.records import Extracted
from soundstream.store import read, upkeep
from soundstream.store.migrate import available, migrate
from soundstream.store.write import init_connection, write_batch

CAP = read.MAX_MISSING_RANGES
DAY_NS = 86_400 * 10**9
Run = tuple[int, int]

WALK_CHUNKS = """
SELECT previous + 1 AS gap_from, seq - 1 AS gap_to
FROM (
    SELECT seq, lag(seq, 1, $3::bigint) OVER (ORDER BY seq) AS previous
    FROM (
        SELECT seq FROM chunks WHERE sensor_id = $1 AND seq < $2::bigint AND seq > $3::bigint
        UNION ALL
        SELECT $2::bigint
    ) AS received
) AS steps
WHERE seq - previous > 1
ORDER BY seq
LIMIT $4
"""

# Chunk rows without frames, straight into ``chunks`` as any writer could.
INSERT_SEQS = """
INSERT INTO chunks (sensor_id, seq, start_ts, sample_rate, n_samples, n_frames, received_at)
SELECT $1, s, now(), 16000, 16000, 0, now() FROM unnest($2::bigint[]) AS s
ON CONFLICT DO NOTHING
"""

# The summary those rows make, as the writer's deltas would fold into it.
SUMMARIZE = """
INSERT INTO sensors (sensor_id, chunks, frames, last_seq, last_received_at)
SELECT sensor_id, count(*), 0, max(seq), now() FROM chunks WHERE sensor_id = $1
GROUP BY sensor_id
ON CONFLICT (sensor_id) DO UPDATE SET chunks = excluded.chunks, last_seq = excluded.last_seq
"""

# What this backend has read, table by table, not yet in the cumulative statistics.
# That includes earlier transactions whose counts are not flushed yet: the work of
# a read is the difference across it, inside one transaction (nothing is flushed in
# a transaction).
READ_SO_FAR = """
SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx_scan,
       coalesce(idx_tup_fetch, 0) AS idx_tup_fetch
FROM pg_stat_xact_user_tables
WHERE relname IN ('chunks', 'seq_runs', 'seq_run_deltas')
"""
COUNTS = ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch")


async def read_so_far(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    return {
        row["relname"]: {name: row[name] for name in COUNTS}
        for row in await conn.fetch(READ_SO_FAR)
    }


class OneConnection:
    """``read.Connections`` over one connection, to read inside its transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._conn


def islands(seqs: Iterable[int]) -> list[Run]:
    runs: list[Run] = []
    for seq in sorted(set(seqs)):
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


async def walked(conn: asyncpg.Connection, sensor: str, last_seq: int) -> list[Run]:
    """``missing_seq`` as the walk over every chunk of the sensor finds it."""
    expired = await conn.fetchval(
        "SELECT expired_through_seq FROM sensors WHERE sensor_id = $1", sensor
    )
    rows = await conn.fetch(WALK_CHUNKS, sensor, last_seq, -1 if expired is None else expired, CAP)
    return [(row["gap_from"], row["gap_to"]) for row in rows]


async def folded_runs(conn: asyncpg.Connection, sensor: str) -> list[Run]:
    rows = await conn.fetch(
        "SELECT first_seq, last_seq FROM seq_runs WHERE sensor_id = $1 ORDER BY first_seq", sensor
    )
    return [(row["first_seq"], row["last_seq"]) for row in rows]


async def status_of(api: read.Connections, sensor: str) -> read.SensorStatus:
    status = await read.sensor_status(api, sensor)
    assert status is not None
    return status


async def test_the_migration_carries_stored_chunks_over_into_runs() -> None:
    name = unique("soundstream_migrate")
    url = database_url(name)
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await migrate(url, until=4)  # a database as the service left it at 0004
        conn = await asyncpg.connect(url)
        try:
            stored = {
                "a": [0, 1, 2, 5, 6, 9],
                "b": [3, 4, 8],
                "c": [*range(10, 20), 100, 102],
                "d": [7],
            }
            for sensor, seqs in stored.items():
                await conn.execute(INSERT_SEQS, sensor, seqs)
                await conn.execute(SUMMARIZE, sensor)
            # Seqs up to 11 of "c" were removed by retention.
            await conn.execute("UPDATE sensors SET expired_through_seq = 11 WHERE sensor_id = 'c'")
            applied = await migrate(url)
            assert applied == [m.version for m in available() if m.version >= 5]
            for sensor, seqs in stored.items():
                assert await folded_runs(conn, sensor) == islands(seqs)
            assert await conn.fetchval("SELECT count(*) FROM seq_run_deltas") == 0
            async with asyncpg.create_pool(url, min_size=1, max_size=1) as api:
                expected = {
                    "a": [(3, 4), (7, 8)],
                    "b": [(0, 2), (5, 7)],
                    "c": [(20, 99), (101, 101)],
                    "d": [(0, 6)],
                }
                for sensor, missing in expected.items():
                    status = await status_of(api, sensor)
                    assert status.missing_seq == missing
                    assert await walked(conn, sensor, status.last_seq) == missing
                # From now on the trigger feeds the runs.
                await conn.execute(INSERT_SEQS, "a", [3, 4, 7])
                await conn.execute(SUMMARIZE, "a")
                assert (await status_of(api, "a")).missing_seq == [(8, 8)]
                await upkeep.fold_deltas(conn)
                assert await folded_runs(conn, "a") == [(0, 7), (9, 9)]
                assert (await status_of(api, "a")).missing_seq == [(8, 8)]
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def write_retrying(conn: asyncpg.Connection, batch: list[Extracted]) -> None:
    """As the writer does when PostgreSQL picks its batch as a deadlock victim."""
    while True:
        try:
            await write_batch(conn, batch)
            return
        except asyncpg.DeadlockDetectedError:
            await asyncio.sleep(0.01)


async def test_two_writers_of_one_sensor_redeliveries_and_folds(
    conn: asyncpg.Connection, api: asyncpg.Pool, database: str
) -> None:
    rng = random.Random(11)
    seqs = sorted(seq for seq in range(400) if rng.random() < 0.7)
    chunks = {seq: extracted("pair", seq) for seq in seqs}
    other, folder = await asyncpg.connect(database), await asyncpg.connect(database)
    await init_connection(other)
    try:
        # One writer does not wait for the other's open transaction on the same sensor:
        # the runs go into an append-only table, no row is shared. (A first batch sets
        # the longest frame span, a row a batch only writes when it has a longer one.)
        await write_batch(conn, [chunks[seqs[0]]])
        held = conn.transaction()
        await held.start()
        await write_batch(conn, [chunks[seq] for seq in seqs[1:10]])
        await other.execute("SET lock_timeout = '2s'")
        await write_batch(other, [chunks[seq] for seq in seqs[10:20]])
        await other.execute("RESET lock_timeout")
        await held.commit()

        # Each writer takes a share in batches of up to 64, with chunks of the other's
        # share again (redelivered), while folds run beside them.
        def batches(share: list[int]) -> list[list[Extracted]]:
            order = [*share, *rng.sample(seqs, 80)]
            rng.shuffle(order)
            cut, out = 0, []
            while cut < len(order):
                size = rng.randint(1, 64)
                out.append([chunks[seq] for seq in order[cut : cut + size]])
                cut += size
            return out

        done = asyncio.Event()

        async def write(c: asyncpg.Connection, share: list[int]) -> None:
            for batch in batches(share):
                await write_retrying(c, batch)

        async def fold_meanwhile() -> None:
            while not done.is_set():
                await upkeep.fold_deltas(folder)
                await asyncio.sleep(0.002)

        folding = asyncio.create_task(fold_meanwhile())
        await asyncio.gather(write(conn, seqs[20::2]), write(other, seqs[21::2]))
        done.set()
        await folding

        status = await status_of(api, "pair")
        assert status.summary.chunks == len(seqs) and status.last_seq == seqs[-1]
        missing = await walked(conn, "pair", status.last_seq)
        assert missing and status.missing_seq == missing
        await upkeep.fold_deltas(conn)
        assert await conn.fetchval("SELECT count(*) FROM seq_run_deltas") == 0
        assert await folded_runs(conn, "pair") == islands(seqs)
        assert await status_of(api, "pair") == status
        # Everything again after the fold: no chunk is new, so no run is added.
        for cut in range(0, len(seqs), 64):
            await write_batch(other, [chunks[seq] for seq in seqs[cut : cut + 64]])
        assert await conn.fetchval("SELECT count(*) FROM seq_run_deltas") == 0
        assert await status_of(api, "pair") == status
    finally:
        await other.close()
        await folder.close()


async def test_retention_takes_the_runs_of_what_it_removed(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    days = [date(2026, 1, 1) + timedelta(days=d) for d in range(4)]
    await upkeep.ensure_partitions(conn, days)
    lost = {3, 17, 25, 26, 27, 38}  # of each day's 40 seqs

    def day_chunk(seq: int) -> Extracted:
        return extracted("ret", seq, start_ns=START_NS + (seq // 40) * DAY_NS + seq % 40 * 10**9)

    kept = [seq for seq in range(160) if seq % 40 not in lost]
    for cut in range(0, len(kept), 20):
        await write_batch(conn, [day_chunk(seq) for seq in kept[cut : cut + 20]])
        if cut < 80:  # the first days folded, the others left as deltas
            await upkeep.fold_deltas(conn)
    # Keep two days before 2026-01-04T12:00: 01-01 (seqs 0..39) goes.
    assert await upkeep.expire(conn, 2, datetime(2026, 1, 4, 12, tzinfo=UTC)) == days[:1]
    assert await conn.fetchval("SELECT expired_through_seq FROM sensors") == 39
    # The run 39..42 reached past the expired seq: cut to what is kept.
    runs = await folded_runs(conn, "ret")
    assert runs == islands(seq for seq in kept if seq > 39)
    status = await status_of(api, "ret")
    expected = [(seq, seq) for seq in range(40, 159) if seq % 40 in {3, 17, 38}]
    expected += [(seq, seq + 2) for seq in range(40, 159) if seq % 40 == 25]
    assert status.missing_seq == sorted(expected)
    assert await walked(conn, "ret", status.last_seq) == status.missing_seq
    # A chunk of the expired day delivered again is stored again, and still not
    # reported, folded or not.
    await write_batch(conn, [day_chunk(5)])
    assert (await status_of(api, "ret")).missing_seq == status.missing_seq
    await upkeep.fold_deltas(conn)
    assert (await status_of(api, "ret")).missing_seq == status.missing_seq


async def seed(conn: asyncpg.Connection, sensor: str, seqs: list[int]) -> None:
    """Store ``seqs`` in statements of 5,000 chunks, fold, and summarize."""
    for cut in range(0, len(seqs), 5000):
        await conn.execute(INSERT_SEQS, sensor, seqs[cut : cut + 5000])
    await upkeep.fold_deltas(conn)
    await conn.execute(SUMMARIZE, sensor)


async def test_the_status_reads_no_chunk_and_a_bounded_number_of_runs(
    conn: asyncpg.Connection, api: asyncpg.Pool, database: str
) -> None:
    history = 50_000
    await seed(conn, "long", [seq for seq in range(history) if seq != 25_000])
    await seed(conn, "lossy", [seq for seq in range(history) if seq % 7 != 3])
    # Delta runs not folded yet: three gaps closed by three statements.
    for seq in (3, 10, 17):
        await conn.execute(INSERT_SEQS, "lossy", [seq])
    expected = {sensor: await walked(conn, sensor, history - 1) for sensor in ("long", "lossy")}
    assert expected["long"] == [(25_000, 25_000)]
    assert len(expected["lossy"]) == CAP and expected["lossy"][0] == (24, 24)
    reader = await asyncpg.connect(database)
    try:
        for sensor, most_runs in (("long", 2), ("lossy", CAP + 1 + 3 + 1)):
            async with reader.transaction():
                before = await read_so_far(reader)
                status = await status_of(OneConnection(reader), sensor)
                after = await read_so_far(reader)
            assert status.missing_seq == expected[sensor]
            chunks, runs, deltas = (
                {name: after[table][name] - before[table][name] for name in COUNTS}
                for table in ("chunks", "seq_runs", "seq_run_deltas")
            )
            assert chunks["seq_scan"] == chunks["idx_scan"] == 0, sensor
            assert runs["seq_scan"] == 0 and runs["idx_tup_fetch"] <= most_runs, (sensor, runs)
            # The deltas not folded (3 rows) are all the deltas read.
            assert deltas["seq_tup_read"] + deltas["idx_tup_fetch"] <= 3, (sensor, deltas)
    finally:
        await reader.close()


@pytest.mark.parametrize("fold_first_half", [False, True])
async def test_more_gaps_than_the_cap_answer_the_lowest_ones(
    conn: asyncpg.Connection, api: asyncpg.Pool, fold_first_half: bool
) -> None:
    rng = random.Random(3)
    history = 8000
    seqs = [seq for seq in range(history) if rng.random() < 0.6]
    # Statements of random size in random order, with some chunks again.
    order = [*seqs, *rng.sample(seqs, 500)]
    rng.shuffle(order)
    cut = 0
    while cut < len(order):
        size = rng.randint(1, 300)
        await conn.execute(INSERT_SEQS, "many", order[cut : cut + size])
        cut += size
        if fold_first_half and cut < len(order) // 2:
            await upkeep.fold_deltas(conn)
    await conn.execute(SUMMARIZE, "many")
    last_seq = max(seqs)
    expected = await walked(conn, "many", last_seq)
    assert len(expected) == CAP
    assert (await status_of(api, "many")).missing_seq == expected
    await upkeep.fold_deltas(conn)
    assert await folded_runs(conn, "many") == islands(seqs)
    assert (await status_of(api, "many")).missing_seq == expected

    # Chunks taken out of ``chunks`` (as retention takes a chunk that arrived out of
    # time order) keep their runs; stored again, they come back as one delta run
    # over hundreds of folded runs and gaps: more gaps closed than the first read of
    # folded runs allows for, so the read goes on.
    await conn.execute("DELETE FROM chunks WHERE sensor_id = 'many' AND seq < 3000")
    await conn.execute(INSERT_SEQS, "many", list(range(3000)))
    await conn.execute(SUMMARIZE, "many")
    expected = await walked(conn, "many", last_seq)
    assert expected[0][0] >= 3000 and len(expected) == CAP
    assert (await status_of(api, "many")).missing_seq == expected
    await upkeep.fold_deltas(conn)
    assert await folded_runs(conn, "many") == islands([*range(3000), *seqs])
    assert (await status_of(api, "many")).missing_seq == expected
