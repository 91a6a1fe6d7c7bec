"""The write side of PostgreSQL: one batch of chunks -> one idempotent transaction.

Chunk rows go through a staging table and ``INSERT ... ON CONFLICT DO NOTHING``;
only the chunks that were new have their frames written (a binary COPY built by
``pgcopy``), so a redelivered or republished chunk adds nothing and raises
nothing, and the per-sensor summary counts each chunk once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from soundstream.core.records import Extracted, ns_to_us
from soundstream.errors import SchemaMissing
from soundstream.store import pgcopy

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
_NEW_CHUNKS = """
INSERT INTO chunks SELECT * FROM chunks_in ORDER BY sensor_id, seq
ON CONFLICT DO NOTHING
RETURNING sensor_id, seq
"""

# Only when the direct COPY found some instants already stored.
_MOVE_FRAMES = """
WITH inserted AS (
    INSERT INTO frames SELECT * FROM frames_in ORDER BY sensor_id, ts
    ON CONFLICT DO NOTHING
    RETURNING sensor_id, ts
)
SELECT sensor_id, count(*) AS frames, min(ts) AS first_ts, max(ts) AS last_ts
FROM inserted GROUP BY sensor_id
"""

_SUMMARY = """
INSERT INTO sensors (sensor_id, first_ts, last_ts, chunks, frames, last_seq, last_received_at)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
                     $5::bigint[], $6::bigint[], $7::timestamptz[])
ORDER BY 1
ON CONFLICT (sensor_id) DO UPDATE SET
    first_ts = least(sensors.first_ts, excluded.first_ts),
    last_ts = greatest(sensors.last_ts, excluded.last_ts),
    chunks = sensors.chunks + excluded.chunks,
    frames = sensors.frames + excluded.frames,
    last_seq = greatest(sensors.last_seq, excluded.last_seq),
    last_received_at = greatest(sensors.last_received_at, excluded.last_received_at)
"""


@dataclass(slots=True)
class _Span:
    """Frames a batch added for one sensor (or one chunk) and the instants they cover."""

    sensor_id: str
    frames: int
    first_us: int | None
    last_us: int | None


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
    """Commit a batch; return (new chunks, new frames). Everything or nothing.

    Chunks go first; the frames of the chunks that were new then COPY straight into
    ``frames``: nothing else can hold their keys, unless two chunks of one sensor
    overlap in time, and then a slower path keeps the frames stored first.
    """
    async with conn.transaction():
        await conn.copy_records_to_table(
            "chunks_in", records=chunk_rows(batch), columns=CHUNK_COLUMNS
        )
        new = {(r["sensor_id"], r["seq"]) for r in await conn.fetch(_NEW_CHUNKS)}
        # The first copy of each new chunk (a batch may hold a chunk twice).
        first: dict[tuple[str, int], Extracted] = {}
        for e in batch:
            if (e.sensor_id, e.seq) in new:
                first.setdefault((e.sensor_id, e.seq), e)
        fresh = list(first.values())
        spans = await _insert_frames(conn, fresh, hop)
        if fresh:
            await conn.execute(_SUMMARY, *_summary(fresh, spans))
    return len(fresh), sum(span.frames for span in spans)


async def _insert_frames(conn: asyncpg.Connection, fresh: list[Extracted], hop: int) -> list[_Span]:
    timed = [(e, e.frame_times_us(hop)) for e in fresh if len(e.features)]
    if not timed:
        return []
    data = b"".join(pgcopy.encode(timed))
    try:
        async with conn.transaction():  # a savepoint: a clash undoes only this COPY
            await _copy(conn, "frames", data)
    except asyncpg.UniqueViolationError:
        await _copy(conn, "frames_in", data)
        return [_Span(*row) for row in await conn.fetch(_MOVE_FRAMES)]
    return [_Span(e.sensor_id, len(times), int(times[0]), int(times[-1])) for e, times in timed]


async def _copy(conn: asyncpg.Connection, table: str, data: bytes) -> None:
    async def once() -> AsyncIterator[bytes]:
        yield data

    await conn.copy_to_table(table, source=once(), columns=pgcopy.COLUMNS, format="binary")


def _summary(fresh: list[Extracted], spans: list[_Span]) -> tuple[list[Any], ...]:
    """Per-sensor columns for ``_SUMMARY``: what this batch adds to each sensor."""
    rows: dict[str, list[Any]] = {}
    for e in fresh:
        row = rows.setdefault(e.sensor_id, [e.sensor_id, None, None, 0, 0, e.seq, e.received_us])
        row[3] += 1
        row[5] = max(row[5], e.seq)
        row[6] = max(row[6], e.received_us)
    for span in spans:
        row = rows[span.sensor_id]
        row[4] += span.frames
        if span.first_us is not None and span.last_us is not None:
            row[1] = span.first_us if row[1] is None else min(row[1], span.first_us)
            row[2] = span.last_us if row[2] is None else max(row[2], span.last_us)
    return tuple(list(column) for column in zip(*rows.values(), strict=True))
