"""The write side of PostgreSQL: one batch of chunks -> one idempotent transaction.

Chunk rows go through a staging table and ``INSERT ... ON CONFLICT DO NOTHING``;
only the chunks that were new have their frames written (one ``chunk_frames`` row
each, already in binary COPY format), so a redelivered or republished chunk adds
nothing and raises nothing. What the batch adds to each sensor's summary goes in
as append-only deltas: two replicas writing the same sensor never wait for each
other on a row (``store.upkeep`` folds the deltas in). The new chunks with frames
are announced to the API replicas in the same transaction (``store.announce``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from soundstream.core.records import Extracted, ns_to_us
from soundstream.errors import SchemaMissing
from soundstream.store import announce, migrate, pgcopy
from soundstream.store.locks import PARTITION_LOCK

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
    "first_ts",
    "last_ts",
)

_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS chunks_in (LIKE chunks) ON COMMIT DELETE ROWS;
"""

# Ordered inserts keep two replicas writing overlapping batches from deadlocking
# in the common case; the writer still retries if PostgreSQL picks a victim.
_NEW_CHUNKS = f"""
INSERT INTO chunks ({", ".join(CHUNK_COLUMNS)})
SELECT {", ".join(CHUNK_COLUMNS)} FROM chunks_in ORDER BY sensor_id, seq
ON CONFLICT DO NOTHING
RETURNING sensor_id, seq
"""

# The batch's deltas, and the longest frame span if this batch has a longer one
# (the row is written only then).
_DELTAS = """
WITH longer AS (
    UPDATE frame_span SET longest = $8 * interval '1 microsecond'
    WHERE longest < $8 * interval '1 microsecond'
)
INSERT INTO sensor_deltas
    (sensor_id, first_ts, last_ts, chunks, frames, last_seq, last_received_at)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
                     $5::bigint[], $6::bigint[], $7::timestamptz[])
"""


def _encode_us(us: int) -> tuple[int]:
    return (us - PG_EPOCH_US,)


def _decode_us(value: tuple[int]) -> int:
    return value[0] + PG_EPOCH_US


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool ``init``: integer-microsecond timestamps and the staging table."""
    # A schema older than this code would fail every batch (a column it writes is not
    # there yet), and the broker would dead-letter the chunks that happened to be
    # blamed: refuse before consuming anything.
    behind = await migrate.missing(conn)
    if behind:
        raise SchemaMissing(
            "the database has no soundstream schema or an old one (migrations"
            f" {', '.join(map(str, behind))} not applied): run `soundstream migrate`"
        )
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
            e.frames.n_frames,
            e.received_us,
            e.frames.first_us,
            e.frames.last_us,
        )
        for e in batch
    ]


async def write_batch(conn: asyncpg.Connection, batch: Sequence[Extracted]) -> tuple[int, int]:
    """Commit a batch; return (new chunks, new frames). Everything or nothing."""
    async with conn.transaction():
        # Shared with every other batch, exclusive for adding or dropping a day
        # partition: a row routed to the default partition while a day is carved out
        # of it would fail the new partition constraint.
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", PARTITION_LOCK)
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
        rows = [e.frames.row for e in fresh if e.frames.n_frames]
        if rows:
            await _copy(conn, "chunk_frames", b"".join(pgcopy.stream(rows)))
        if fresh:
            await conn.execute(_DELTAS, *_deltas(fresh), _longest_us(fresh))
        # Last, so the stamp is close to the commit; delivered only if it commits.
        await announce.announce(conn, [(e.sensor_id, e.seq) for e in fresh if e.frames.n_frames])
    return len(fresh), sum(e.frames.n_frames for e in fresh)


async def _copy(conn: asyncpg.Connection, table: str, data: bytes) -> None:
    async def once() -> AsyncIterator[bytes]:
        yield data

    await conn.copy_to_table(table, source=once(), columns=pgcopy.COLUMNS, format="binary")


def _longest_us(fresh: list[Extracted]) -> int:
    return max(
        (e.frames.last_us - e.frames.first_us)
        if e.frames.first_us is not None and e.frames.last_us is not None
        else 0
        for e in fresh
    )


def _deltas(fresh: list[Extracted]) -> tuple[list[Any], ...]:
    """Per-sensor columns for ``_DELTAS``: what this batch adds to each sensor."""
    rows: dict[str, list[Any]] = {}
    for e in fresh:
        row = rows.setdefault(e.sensor_id, [e.sensor_id, None, None, 0, 0, e.seq, e.received_us])
        row[3] += 1
        row[4] += e.frames.n_frames
        row[5] = max(row[5], e.seq)
        row[6] = max(row[6], e.received_us)
        first, last = e.frames.first_us, e.frames.last_us
        if first is not None and last is not None:
            row[1] = first if row[1] is None else min(row[1], first)
            row[2] = last if row[2] is None else max(row[2], last)
    return tuple(list(column) for column in zip(*rows.values(), strict=True))
