"""The write path against a real database: idempotent batches and the sensor summary."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
from support import START_NS, tone

from soundstream.core.features import Extractor
from soundstream.core.fields import FeatureParams
from soundstream.core.records import Delivery, Extracted, frame_times_us
from soundstream.core.wire import Chunk
from soundstream.errors import SchemaMissing
from soundstream.store import write as store

PARAMS = FeatureParams()
EXTRACT = Extractor(PARAMS)


def extracted(
    sensor: str, seq: int, seconds: float = 0.5, rate: int = 16000, tag: int = 1
) -> Extracted:
    samples = tone(seconds, rate, seed=seq)
    start = START_NS + seq * int(seconds * 1e9)
    delivery = Delivery(tag, Chunk(sensor, seq, start, rate, samples), START_NS // 1000 + seq)
    return Extracted.of(delivery, EXTRACT(samples, rate))


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    await store.init_connection(connection)
    try:
        yield connection
    finally:
        await connection.close()


async def test_a_batch_written_twice_adds_nothing_the_second_time(conn: asyncpg.Connection) -> None:
    batch = [extracted("a", 0), extracted("a", 1), extracted("b", 0)]
    frames = sum(len(e.features) for e in batch)
    assert await store.write_batch(conn, batch, PARAMS.hop) == (3, frames)
    # A redelivery after commit but before the ack: same rows again.
    assert await store.write_batch(conn, batch, PARAMS.hop) == (0, 0)
    # Mixed: one old chunk, one new.
    assert await store.write_batch(conn, [batch[0], extracted("a", 2)], PARAMS.hop) == (
        1,
        len(batch[0].features),
    )
    summary = await conn.fetchrow(
        "SELECT chunks, frames, last_seq FROM sensors WHERE sensor_id = 'a'"
    )
    assert tuple(summary) == (3, 3 * len(batch[0].features), 2)


async def test_duplicates_inside_one_batch_count_once(conn: asyncpg.Connection) -> None:
    one = extracted("dup", 5)
    assert await store.write_batch(conn, [one, one, one], PARAMS.hop) == (1, len(one.features))
    assert await conn.fetchval("SELECT frames FROM sensors") == len(one.features)


async def test_rows_hold_the_exact_times_and_values(conn: asyncpg.Connection) -> None:
    e = extracted("exact", 3, seconds=1.0, rate=22050)
    await store.write_batch(conn, [e], PARAMS.hop)
    rows = await conn.fetch("SELECT ts, rms, mel, mfcc FROM frames ORDER BY ts")
    assert [r["ts"] for r in rows] == frame_times_us(
        e.start_ns, len(e.features), PARAMS.hop, 22050
    ).tolist()
    np.testing.assert_array_equal([r["rms"] for r in rows], e.features.rms)
    np.testing.assert_array_equal([r["mel"] for r in rows], e.features.mel)
    np.testing.assert_array_equal([r["mfcc"] for r in rows], e.features.mfcc)
    chunk = await conn.fetchrow("SELECT * FROM chunks")
    assert chunk["n_samples"] == 22050 and chunk["n_frames"] == len(e.features)
    summary = await conn.fetchrow("SELECT first_ts, last_ts FROM sensors")
    assert (summary["first_ts"], summary["last_ts"]) == (rows[0]["ts"], rows[-1]["ts"])


async def test_a_chunk_without_frames_is_recorded(conn: asyncpg.Connection) -> None:
    short = extracted("short", 0, seconds=0.01)
    assert len(short.features) == 0
    assert await store.write_batch(conn, [short], PARAMS.hop) == (1, 0)
    row = await conn.fetchrow("SELECT chunks, frames, first_ts FROM sensors")
    assert tuple(row) == (1, 0, None)


async def test_out_of_order_chunks_widen_the_summary(conn: asyncpg.Connection) -> None:
    await store.write_batch(conn, [extracted("ooo", 4)], PARAMS.hop)
    await store.write_batch(conn, [extracted("ooo", 1)], PARAMS.hop)
    first, last, last_seq = await conn.fetchrow("SELECT first_ts, last_ts, last_seq FROM sensors")
    times = await conn.fetchrow("SELECT min(ts), max(ts) FROM frames")
    assert (first, last) == tuple(times) and last_seq == 4


async def test_a_failed_batch_leaves_nothing(conn: asyncpg.Connection) -> None:
    good = extracted("atomic", 0)
    broken = extracted("atomic", 1)
    # The chunk rows copy fine; the frame rows then fail to encode mid-transaction.
    text = np.full(broken.features.mel.shape, "x", dtype=object)
    object.__setattr__(broken.features, "mel", text)
    with pytest.raises((asyncpg.DataError, TypeError, ValueError)):
        await store.write_batch(conn, [good, broken], PARAMS.hop)
    assert await conn.fetchval("SELECT count(*) FROM chunks") == 0
    assert await conn.fetchval("SELECT count(*) FROM frames") == 0
    # The connection is still usable and the staging tables are empty.
    assert await store.write_batch(conn, [good], PARAMS.hop) == (1, len(good.features))


async def test_a_database_without_the_schema_is_refused(database: str) -> None:
    bare = database.rsplit("/", 1)[0] + "/postgres"
    connection = await asyncpg.connect(bare)
    try:
        with pytest.raises(SchemaMissing, match="soundstream migrate"):
            await store.init_connection(connection)
    finally:
        await connection.close()


async def test_chunks_overlapping_in_time_keep_the_frames_stored_first(
    conn: asyncpg.Connection,
) -> None:
    first = extracted("overlap", 0, seconds=1.0)
    # Another chunk of the same sensor claiming the very same instants.
    again = Extracted.of(
        Delivery(2, Chunk("overlap", 1, first.start_ns, 16000, tone(1.0, 16000, seed=7)), 0),
        EXTRACT(tone(1.0, 16000, seed=7), 16000),
    )
    n = len(first.features)
    assert await store.write_batch(conn, [first], PARAMS.hop) == (1, n)
    later = extracted("overlap", 5)
    # ``again`` adds its chunk row but no frame; ``later`` adds all of its own.
    assert await store.write_batch(conn, [again, later], PARAMS.hop) == (2, len(later.features))
    rms = await conn.fetchval("SELECT rms FROM frames WHERE seq = 0 ORDER BY ts LIMIT 1")
    assert rms == first.features.rms[0]
    summary = await conn.fetchrow("SELECT chunks, frames FROM sensors")
    assert tuple(summary) == (3, await conn.fetchval("SELECT count(*) FROM frames"))
