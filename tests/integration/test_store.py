"""The store against a real database: idempotent batches, the summary and its deltas,
reading back a chunk row per chunk, day partitions and retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import asyncpg
import numpy as np
import pytest
from support import START_NS, tone

from soundstream.core.features import Extractor
from soundstream.core.fields import FEATURE_FIELDS, SCALARS, FeatureParams
from soundstream.core.records import Delivery, Encoded, Extracted, Job, frame_times_us
from soundstream.core.timefmt import from_micros
from soundstream.core.wire import Chunk
from soundstream.errors import SchemaMissing
from soundstream.store import read, upkeep
from soundstream.store.migrate import available
from soundstream.store.pgcopy import chunk_row
from soundstream.store.write import init_connection, write_batch

PARAMS = FeatureParams()
EXTRACT = Extractor(PARAMS)
DAY_NS = 86_400 * 10**9


def extracted(
    sensor: str,
    seq: int,
    seconds: float = 0.5,
    rate: int = 16000,
    *,
    start_ns: int | None = None,
    received_us: int | None = None,
) -> Extracted:
    samples = tone(seconds, rate, seed=seq)
    start = START_NS + seq * int(seconds * 1e9) if start_ns is None else start_ns
    received = START_NS // 1000 + seq if received_us is None else received_us
    delivery = Delivery(1, Chunk(sensor, seq, start, rate, samples), received)
    return Extracted.of(delivery, chunk_row(Job.of(delivery), PARAMS.hop, EXTRACT(samples, rate)))


def values(e: Extracted) -> dict[str, np.ndarray]:
    """What the chunk's frames hold, recomputed."""
    chunk_seconds = e.n_samples / e.sample_rate
    f = EXTRACT(tone(chunk_seconds, e.sample_rate, seed=e.seq), e.sample_rate)
    return {name: getattr(f, name) for name in FEATURE_FIELDS}


async def summary(api: asyncpg.Pool, sensor: str) -> read.SensorStatus:
    status = await read.sensor_status(api, sensor)
    assert status is not None
    return status


async def test_a_batch_written_twice_adds_nothing_the_second_time(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    batch = [extracted("a", 0), extracted("a", 1), extracted("b", 0)]
    frames = sum(e.frames.n_frames for e in batch)
    assert await write_batch(conn, batch) == (3, frames)
    # A redelivery after commit but before the ack: same rows again.
    assert await write_batch(conn, batch) == (0, 0)
    # Mixed: one old chunk, one new.
    assert await write_batch(conn, [batch[0], extracted("a", 2)]) == (1, batch[0].frames.n_frames)
    status = await summary(api, "a")
    assert (status.summary.chunks, status.summary.frames, status.last_seq) == (
        3,
        3 * batch[0].frames.n_frames,
        2,
    )
    assert await conn.fetchval("SELECT count(*) FROM chunk_frames") == 4


async def test_duplicates_inside_one_batch_count_once(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    one = extracted("dup", 5)
    assert await write_batch(conn, [one, one, one]) == (1, one.frames.n_frames)
    assert (await summary(api, "dup")).summary.frames == one.frames.n_frames


async def test_the_frames_view_holds_the_exact_times_and_values(conn: asyncpg.Connection) -> None:
    e = extracted("exact", 3, seconds=1.0, rate=22050)
    await write_batch(conn, [e])
    rows = await conn.fetch("SELECT * FROM frames ORDER BY ts")
    n = e.frames.n_frames
    assert [r["ts"] for r in rows] == frame_times_us(e.start_ns, n, PARAMS.hop, 22050).tolist()
    assert {r["seq"] for r in rows} == {3}
    expected = values(e)
    for name in SCALARS:
        np.testing.assert_array_equal([r[name] for r in rows], expected[name])
    np.testing.assert_array_equal([r["mel"] for r in rows], expected["mel"])
    np.testing.assert_array_equal([r["mfcc"] for r in rows], expected["mfcc"])
    chunk = await conn.fetchrow("SELECT * FROM chunks")
    assert chunk["n_samples"] == 22050 and chunk["n_frames"] == n
    assert (chunk["first_ts"], chunk["last_ts"]) == (rows[0]["ts"], rows[-1]["ts"])
    # sensor_frames() is the same through the chunk index.
    same = await conn.fetch(
        "SELECT * FROM sensor_frames('exact', $1, $2)", rows[0]["ts"], rows[-1]["ts"] + 1
    )
    assert [tuple(r) for r in same] == [tuple(r) for r in rows]


async def test_reads_page_through_any_range_exactly(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    # Chunks of several lengths, one long chunk starting well before the others end,
    # and gaps: every page boundary and look-back case.
    batch = [
        extracted("pages", seq, seconds=seconds, start_ns=START_NS + offset_s * 10**9)
        for seq, (seconds, offset_s) in enumerate(
            [(1.0, 0), (0.3, 1), (2.5, 1.3), (0.05, 4), (1.0, 10), (20.0, 5)]
        )
    ]
    await write_batch(conn, batch)
    stored = await conn.fetch("SELECT ts, rms, mel FROM frames ORDER BY ts")
    all_ts = np.array([r["ts"] for r in stored])
    for lo_i, hi_i, limit in [(0, len(all_ts), 7), (40, 300, 1000), (5, 6, 1), (100, 500, 33)]:
        lo, hi = (
            from_micros(int(all_ts[lo_i])),
            from_micros(int(all_ts[min(hi_i, len(all_ts) - 1)])),
        )
        got_ts: list[int] = []
        after = None
        while True:
            page = await read.features(
                api, "pages", start=lo, end=hi, fields=["rms", "mel"], limit=limit, after_ts=after
            )
            assert len(page) <= limit
            got_ts += page.ts.tolist()
            for i, ts in enumerate(page.ts):
                row = stored[int(np.searchsorted(all_ts, ts))]
                assert page.columns["rms"][i] == row["rms"]
                np.testing.assert_array_equal(page.columns["mel"][i], row["mel"])
            if not page.more:
                break
            after = from_micros(int(page.ts[-1]))
        wanted = all_ts[(all_ts >= all_ts[lo_i]) & (all_ts < all_ts[min(hi_i, len(all_ts) - 1)])]
        assert got_ts == wanted.tolist()


async def test_a_chunk_without_frames_is_recorded(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    short = extracted("short", 0, seconds=0.01)
    assert short.frames == Encoded(0, None, None, b"")
    assert await write_batch(conn, [short]) == (1, 0)
    s = (await summary(api, "short")).summary
    assert (s.chunks, s.frames, s.first_ts) == (1, 0, None)
    assert await conn.fetchval("SELECT count(*) FROM chunk_frames") == 0


async def test_out_of_order_chunks_widen_the_summary(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    await write_batch(conn, [extracted("ooo", 4)])
    await write_batch(conn, [extracted("ooo", 1)])
    status = await summary(api, "ooo")
    first, last = await conn.fetchrow("SELECT min(ts), max(ts) FROM frames")
    assert (status.summary.first_ts, status.summary.last_ts) == (
        from_micros(first),
        from_micros(last),
    )
    assert status.last_seq == 4 and status.missing_seq == [(0, 0), (2, 3)]


async def test_folding_the_deltas_changes_no_answer(
    conn: asyncpg.Connection, api: asyncpg.Pool, database: str
) -> None:
    for seq in range(6):
        await write_batch(conn, [extracted("fold", seq), extracted(f"other{seq % 2}", seq)])
    before = await read.list_sensors(api)
    status = await summary(api, "fold")
    # Folds from several connections at once: each delta counts once.
    others = [await asyncpg.connect(database) for _ in range(3)]
    try:
        await asyncio.gather(*(upkeep.fold_deltas(c) for c in [conn, *others]))
    finally:
        for c in others:
            await c.close()
    assert await conn.fetchval("SELECT count(*) FROM sensor_deltas") == 0
    assert await read.list_sensors(api) == before
    assert await summary(api, "fold") == status
    await write_batch(conn, [extracted("fold", 9)])
    assert (await summary(api, "fold")).summary.chunks == 7


async def test_a_failed_batch_leaves_nothing(conn: asyncpg.Connection) -> None:
    good = extracted("atomic", 0)
    broken = extracted("atomic", 1)
    # The chunk rows go in; the second chunk's frame row is then not valid COPY data.
    torn = Extracted.of(
        Delivery(1, Chunk("atomic", 1, broken.start_ns, 16000, np.zeros(1, np.float32)), 0),
        Encoded(broken.frames.n_frames, 0, 1, broken.frames.row[:-7]),
    )
    with pytest.raises(asyncpg.PostgresError):
        await write_batch(conn, [good, torn])
    for table in ("chunks", "chunk_frames", "sensor_deltas"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
    # The connection is still usable and the staging table is empty.
    assert await write_batch(conn, [good]) == (1, good.frames.n_frames)


async def test_a_database_without_the_schema_is_refused(database: str) -> None:
    bare = database.rsplit("/", 1)[0] + "/postgres"
    connection = await asyncpg.connect(bare)
    try:
        with pytest.raises(SchemaMissing, match="soundstream migrate"):
            await init_connection(connection)
    finally:
        await connection.close()


async def test_a_schema_behind_the_code_is_refused_naming_what_is_missing(
    conn: asyncpg.Connection,
) -> None:
    """A replica newer than the schema (migrate not run yet) must not start writing:
    every batch would fail, and the chunks blamed would be dead-lettered."""
    latest = available()[-1].version
    await conn.execute("DELETE FROM schema_migrations WHERE version = $1", latest)
    try:
        with pytest.raises(SchemaMissing, match=f"migrations {latest} not applied"):
            await init_connection(conn)
    finally:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            latest,
            available()[-1].name,
        )
    await init_connection(conn)  # current again: accepted


async def test_chunks_overlapping_in_time_show_the_frames_received_first(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    first = extracted("overlap", 0, seconds=1.0, received_us=10)
    # Another chunk of the same sensor claiming the very same instants, received later
    # but written in the same batch, before it.
    again = extracted("overlap", 1, seconds=1.0, start_ns=first.start_ns, received_us=20)
    later = extracted("overlap", 5)
    assert await write_batch(conn, [again, first, later]) == (
        3,
        2 * first.frames.n_frames + later.frames.n_frames,
    )
    n = first.frames.n_frames
    assert await conn.fetchval("SELECT count(*) FROM frames") == n + later.frames.n_frames
    assert await conn.fetchval("SELECT count(DISTINCT seq) FROM frames") == 2
    rms = await conn.fetch("SELECT rms FROM frames WHERE seq = 0 ORDER BY ts")
    np.testing.assert_array_equal([r["rms"] for r in rms], values(first)["rms"])
    page = await read.features(
        api,
        "overlap",
        start=from_micros(first.frames.first_us or 0),
        end=from_micros((later.frames.last_us or 0) + 1),
        fields=["rms"],
        limit=1000,
    )
    assert len(page) == n + later.frames.n_frames
    np.testing.assert_array_equal(page.columns["rms"][:n], values(first)["rms"])


async def test_partitions_are_made_ahead_and_take_in_what_came_before(
    conn: asyncpg.Connection,
) -> None:
    day = date(2026, 1, 1)  # START_NS
    early = extracted("part", 0)
    await write_batch(conn, [early])  # no partition for that day yet: the default holds it
    assert await conn.fetchval("SELECT count(*) FROM chunk_frames_default") == 1
    created = await upkeep.ensure_partitions(conn, [day, day + timedelta(days=1)])
    assert created == [day, day + timedelta(days=1)]
    assert await upkeep.ensure_partitions(conn, [day]) == []
    assert await conn.fetchval("SELECT count(*) FROM chunk_frames_default") == 0
    assert await conn.fetchval("SELECT count(*) FROM chunk_frames_20260101") == 1
    await write_batch(conn, [extracted("part", 1)])
    assert await conn.fetchval("SELECT count(*) FROM chunk_frames_20260101") == 2


async def test_retention_drops_whole_days_and_what_they_counted(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    days = [date(2026, 1, 1) + timedelta(days=d) for d in range(4)]
    await upkeep.ensure_partitions(conn, days)
    chunks = [
        extracted("ret", seq, seconds=1.0, start_ns=START_NS + d * DAY_NS + seq * 10**9)
        for d in range(4)
        for seq in [10 * d, 10 * d + 1]
    ]
    stray = extracted("ret", 100, seconds=1.0, start_ns=START_NS - 400 * DAY_NS)  # default
    await write_batch(conn, [*chunks, stray])
    # Keep two days before 2026-01-04T12:00: 01-02 holds some of them, 01-01 goes.
    now = datetime(2026, 1, 4, 12, tzinfo=UTC)
    assert await upkeep.expire(conn, 2, now) == days[:1]
    for day in days[:1]:
        assert await conn.fetchval("SELECT to_regclass($1)", upkeep.partition_name(day)) is None
    assert await conn.fetchval("SELECT to_regclass($1)", upkeep.partition_name(days[1]))
    kept = chunks[2:]
    assert await conn.fetchval("SELECT count(*) FROM chunk_frames") == len(kept)
    assert sorted(r["seq"] for r in await conn.fetch("SELECT seq FROM chunks")) == [
        10,
        11,
        20,
        21,
        30,
        31,
    ]
    status = await summary(api, "ret")
    assert status.summary.chunks == len(kept)
    assert status.summary.frames == sum(e.frames.n_frames for e in kept)
    assert status.summary.first_ts == from_micros(kept[0].frames.first_us or 0)
    # Seqs that retention removed are not missing; the gap between kept ones is.
    assert status.missing_seq == [(12, 19), (22, 29), (32, 99)]
    assert await upkeep.expire(conn, 2, now) == []


async def test_a_day_carved_out_of_the_default_partition_while_batches_land_in_it(
    conn: asyncpg.Connection, database: str
) -> None:
    other = await asyncpg.connect(database)
    await init_connection(other)
    try:
        for round_ in range(5):
            day = date(2030, 1, 1) + timedelta(days=round_)
            start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9

            async def write(first: int, *, start: int = start) -> None:
                for seq in range(first, first + 8):
                    await write_batch(conn, [extracted("carve", seq, start_ns=start + seq * 10**9)])

            await asyncio.gather(write(100 * round_), upkeep.ensure_partitions(other, [day]))
            name = upkeep.partition_name(day)
            assert await conn.fetchval(f"SELECT count(*) FROM {name}") == 8
        assert await conn.fetchval("SELECT count(*) FROM chunk_frames_default") == 0
    finally:
        await other.close()
