"""The write side of PostgreSQL: one batch of chunks -> one idempotent transaction.

Rows are COPYed (frames in binary, built by ``pgcopy``) into per-connection
temporary tables, then moved with ``INSERT ... ON CONFLICT DO NOTHING``. Frames are
taken only from chunks that were new, so a redelivered or republished chunk adds
nothing and raises nothing, and the per-sensor summary counts each chunk once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from soundstream import pgcopy
from soundstream.errors import SchemaMissing
from soundstream.records import Extracted, ns_to_us

# timestamptz travels as integer microseconds since 2000-01-01 (PostgreSQL's epoch):
# no datetime objects on the hot path.
PG_EPOCH_US = pgcopy.PG_EPOCH_US

CHUNK_COLUMNS = (
    "sensor_id",
    "seq",
    "start_ts",
    "sample_rate",
    "n_samples",
    "n_frames",
    "received_at",
)

_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS chunks_in (LIKE chunks) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS frames_in (LIKE frames) ON COMMIT DELETE ROWS;
"""

# Ordered inserts keep two replicas writing overlapping batches from deadlocking
# in the common case; the writer still retries if PostgreSQL picks a victim.
_MOVE = """
WITH new_chunks AS (
    INSERT INTO chunks SELECT * FROM chunks_in ORDER BY sensor_id, seq
    ON CONFLICT DO NOTHING
    RETURNING sensor_id, seq, received_at
), new_frames AS (
    INSERT INTO frames
    SELECT f.* FROM frames_in f JOIN new_chunks c USING (sensor_id, seq)
    ORDER BY f.sensor_id, f.ts
    ON CONFLICT DO NOTHING
    RETURNING sensor_id, ts
), chunk_totals AS (
    SELECT sensor_id, count(*) AS chunks, max(seq) AS last_seq, max(received_at) AS last_received_at
    FROM new_chunks GROUP BY sensor_id
), frame_totals AS (
    SELECT sensor_id, count(*) AS frames, min(ts) AS first_ts, max(ts) AS last_ts
    FROM new_frames GROUP BY sensor_id
), summary AS (
    INSERT INTO sensors (sensor_id, first_ts, last_ts, chunks, frames, last_seq, last_received_at)
    SELECT c.sensor_id, f.first_ts, f.last_ts, c.chunks, coalesce(f.frames, 0),
           c.last_seq, c.last_received_at
    FROM chunk_totals c LEFT JOIN frame_totals f USING (sensor_id)
    ORDER BY c.sensor_id
    ON CONFLICT (sensor_id) DO UPDATE SET
        first_ts = least(sensors.first_ts, excluded.first_ts),
        last_ts = greatest(sensors.last_ts, excluded.last_ts),
        chunks = sensors.chunks + excluded.chunks,
        frames = sensors.frames + excluded.frames,
        last_seq = greatest(sensors.last_seq, excluded.last_seq),
        last_received_at = greatest(sensors.last_received_at, excluded.last_received_at)
    RETURNING 1
)
SELECT (SELECT count(*) FROM new_chunks) AS chunks, (SELECT count(*) FROM new_frames) AS frames
"""


def _encode_us(us: int) -> tuple[int]:
    return (us - PG_EPOCH_US,)


def _decode_us(value: tuple[int]) -> int:
    return value[0] + PG_EPOCH_US


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool ``init``: integer-microsecond timestamps and the staging tables."""
    if not await conn.fetchval("SELECT to_regclass('sensors') IS NOT NULL"):
        raise SchemaMissing("the database has no soundstream schema: run `soundstream migrate`")
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_us,
        decoder=_decode_us,
        format="tuple",
    )
    await conn.execute(_TEMP_TABLES)


def chunk_rows(batch: Sequence[Extracted]) -> list[tuple[Any, ...]]:
    return [
        (
            e.sensor_id,
            e.seq,
            ns_to_us(e.start_ns),
            e.sample_rate,
            e.n_samples,
            len(e.features),
            e.received_us,
        )
        for e in batch
    ]


async def write_batch(
    conn: asyncpg.Connection, batch: Sequence[Extracted], hop: int
) -> tuple[int, int]:
    """Commit a batch; return (new chunks, new frames). Everything or nothing."""
    chunks = chunk_rows(batch)
    frames = b"".join(pgcopy.encode(batch, hop))
    async with conn.transaction():
        await conn.copy_records_to_table("chunks_in", records=chunks, columns=CHUNK_COLUMNS)
        await conn.copy_to_table(
            "frames_in", source=_once(frames), columns=pgcopy.COLUMNS, format="binary"
        )
        row = await conn.fetchrow(_MOVE)
    assert row is not None
    return int(row["chunks"]), int(row["frames"])


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
