"""The SQL the HTTP API reads with.

Sensor summaries come from the ``sensors`` table the writer keeps current, so
listing sensors never touches ``frames``. Every identifier in generated SQL comes
from ``FEATURE_FIELDS``; request text only ever reaches PostgreSQL as a bound
parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from soundstream.core.fields import SCALARS

SCALAR_FIELDS = SCALARS
ARRAY_FIELDS = ("mel", "mfcc")
FEATURE_FIELDS = SCALAR_FIELDS + ARRAY_FIELDS

# Frames per features page: the default, and the most one request may read.
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000

# ``missing_seq`` lists at most this many ranges, the lowest seqs first, so that a
# sensor with pathological loss cannot make its status answer unbounded. Lowest
# first keeps the list stable while new chunks arrive.
MAX_MISSING_RANGES = 1000


@dataclass(frozen=True, slots=True)
class Sensor:
    sensor_id: str
    first_ts: datetime | None  # None until a chunk long enough for one frame arrives
    last_ts: datetime | None
    chunks: int
    frames: int


@dataclass(frozen=True, slots=True)
class SensorStatus:
    summary: Sensor
    last_seq: int
    missing_seq: list[tuple[int, int]]  # inclusive [from, to] ranges below last_seq
    last_received_at: datetime


@dataclass(frozen=True, slots=True)
class FeaturePage:
    """Rows hold ``ts`` first, then the requested fields in the order asked for."""

    rows: list[Any]  # asyncpg.Record
    more: bool  # another page follows the last row


_SUMMARY = "sensor_id, first_ts, last_ts, chunks, frames"

# Each received seq paired with the one before it (lag); a step of more than one is
# a gap. The sentinel row at last_seq closes a gap that runs up to it even if the
# chunk at last_seq itself is not (yet) in ``chunks``; lag's default of -1 opens a
# gap at seq 0 when the first chunk received came later.
_MISSING_SEQ = f"""
SELECT previous + 1 AS gap_from, seq - 1 AS gap_to
FROM (
    SELECT seq, lag(seq, 1, -1::bigint) OVER (ORDER BY seq) AS previous
    FROM (
        SELECT seq FROM chunks WHERE sensor_id = $1 AND seq < $2::bigint
        UNION ALL
        SELECT $2::bigint
    ) AS received
) AS steps
WHERE seq - previous > 1
ORDER BY seq
LIMIT {MAX_MISSING_RANGES}
"""


async def list_sensors(pool: asyncpg.Pool) -> list[Sensor]:
    rows = await pool.fetch(f"SELECT {_SUMMARY} FROM sensors ORDER BY sensor_id")
    return [Sensor(*row) for row in rows]


async def sensor_status(pool: asyncpg.Pool, sensor_id: str) -> SensorStatus | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {_SUMMARY}, last_seq, last_received_at FROM sensors WHERE sensor_id = $1",
            sensor_id,
        )
        if row is None:
            return None
        gaps = await conn.fetch(_MISSING_SEQ, sensor_id, row["last_seq"])
    return SensorStatus(
        summary=Sensor(*row[:5]),
        last_seq=row["last_seq"],
        missing_seq=[(gap["gap_from"], gap["gap_to"]) for gap in gaps],
        last_received_at=row["last_received_at"],
    )


async def features(
    pool: asyncpg.Pool,
    sensor_id: str,
    *,
    start: datetime,
    end: datetime,
    fields: Sequence[str],
    limit: int,
    after_ts: datetime | None = None,
) -> FeaturePage:
    """Frames with ``start <= ts < end`` (and ``ts > after_ts``), oldest first.

    Keyset pagination: ``(sensor_id, ts)`` is the primary key, so each page is one
    index range scan however deep into the range it starts.
    """
    unknown = [name for name in fields if name not in FEATURE_FIELDS]
    if unknown:
        raise ValueError(f"unknown feature fields: {unknown}")
    columns = "".join(f", {name}" for name in fields)
    sql = f"SELECT ts{columns} FROM frames WHERE sensor_id = $1 AND ts >= $2 AND ts < $3"
    args: list[Any] = [sensor_id, start, end, limit + 1]
    if after_ts is not None:
        sql += " AND ts > $5"
        args.append(after_ts)
    # One row more than asked for tells whether a next page exists.
    rows = await pool.fetch(sql + " ORDER BY ts LIMIT $4", *args)
    return FeaturePage(rows=rows[:limit], more=len(rows) > limit)
