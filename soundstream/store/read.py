"""The SQL the HTTP API reads with, and the decoding of what it returns.

Sensor summaries come from ``sensors`` plus the deltas not yet folded into it, so
listing sensors never touches the frames. A sensor's missing seqs come from its
lowest runs of received seqs (``seq_runs``) and the run deltas not folded yet,
never from its chunks: the work is bounded by the ranges listed, not the history.
Features are read a chunk row at a time (``chunk_frames``: each field an array over
the chunk's frames), sent by PostgreSQL in its binary array format (``array_send``)
and decoded with numpy: no Python object per frame or value. Every identifier in
generated SQL comes from ``FEATURE_FIELDS``; request text only ever reaches
PostgreSQL as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
import numpy as np

from soundstream.core import seqruns
from soundstream.core.fields import ARRAY_FIELDS, FEATURE_FIELDS
from soundstream.store import pgcopy

# Frames per features page: the default, and the most one request may read.
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000
# Sensors per page of the sensor list.
MAX_SENSORS_PAGE = 1000

# ``missing_seq`` lists at most this many ranges, the lowest seqs first, so that a
# sensor with pathological loss cannot make its status answer unbounded. Lowest
# first keeps the list stable while new chunks arrive.
MAX_MISSING_RANGES = 1000
_MICROSECOND = timedelta(microseconds=1)


class Connections(Protocol):
    """Where reads get a connection: an asyncpg pool, or ``BoundedPool``."""

    def acquire(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...


class BoundedPool:
    """The API's pool, waited on for at most ``timeout_s`` a request: past that the
    request fails (``TimeoutError``, answered 503) instead of queueing without bound
    behind slow ones."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    def acquire(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        acquiring: AbstractAsyncContextManager[asyncpg.Connection]
        acquiring = self._pool.acquire(timeout=self._timeout_s)
        return acquiring


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


Column = np.ndarray | list[np.ndarray]


@dataclass(frozen=True, slots=True)
class FeaturePage:
    """Frames in time order: ``ts`` as microseconds since the UNIX epoch, and each
    requested field as a column: float32 values for a scalar, a (frames, width)
    array for mel/mfcc (or one array per frame where chunks stored other widths)."""

    ts: np.ndarray
    columns: dict[str, Column]
    more: bool  # another page follows the last frame

    def __len__(self) -> int:
        return len(self.ts)


# The summary folded so far plus what is not folded yet.
_SUMMARY = """
SELECT sensor_id, min(first_ts) AS first_ts, max(last_ts) AS last_ts,
       sum(chunks)::bigint AS chunks, sum(frames)::bigint AS frames,
       max(last_seq) AS last_seq, max(last_received_at) AS last_received_at,
       max(expired_through_seq) AS expired_through_seq
FROM (
    SELECT sensor_id, first_ts, last_ts, chunks, frames, last_seq, last_received_at,
           expired_through_seq
    FROM sensors {where}
    UNION ALL
    SELECT sensor_id, first_ts, last_ts, chunks, frames, last_seq, last_received_at, NULL
    FROM sensor_deltas {where}
) AS parts
GROUP BY sensor_id
ORDER BY sensor_id
"""

# What the missing seqs of a sensor below $3 (its last seq) are computed from, in
# one snapshot (a fold moving run deltas into ``seq_runs`` is seen wholly or not at
# all): the highest seq retention removed (``above``, read again here in case it
# ran since the summary was read), the run deltas not folded yet, the folded run
# that may reach past ``above``, and the folded runs after ``above`` in order:
# enough of them ($4 plus one per delta run, ``asked``) for $4 gaps, since a delta
# run holds seqs no folded run holds and so closes at most one folded gap.
_RUNS = """
WITH bound AS (
    SELECT greatest($2::bigint, (SELECT expired_through_seq FROM sensors WHERE sensor_id = $1))
           AS above
),
fresh AS (
    SELECT d.first_seq, d.last_seq FROM seq_run_deltas d, bound
    WHERE d.sensor_id = $1 AND d.last_seq > bound.above AND d.first_seq < $3
),
asked AS (SELECT $4 + count(*) AS n FROM fresh)
SELECT bound.above, asked.n AS asked,
       ARRAY(SELECT ARRAY[first_seq, last_seq] FROM fresh) AS fresh,
       ARRAY(
           SELECT ARRAY[first_seq, last_seq] FROM seq_runs
           WHERE sensor_id = $1 AND first_seq <= bound.above
           ORDER BY first_seq DESC LIMIT 1
       ) AS straddling,
       ARRAY(
           SELECT ARRAY[first_seq, last_seq] FROM seq_runs
           WHERE sensor_id = $1 AND first_seq > bound.above AND first_seq < $3
           ORDER BY first_seq LIMIT asked.n
       ) AS folded
FROM bound, asked
"""

# The folded runs after the first seq $2, when those read left fewer gaps than wanted.
_MORE_RUNS = """
SELECT first_seq, last_seq FROM seq_runs
WHERE sensor_id = $1 AND first_seq > $2 AND first_seq < $3
ORDER BY first_seq LIMIT $4
"""

# The chunk rows that can hold frames in [$2, $3), enough of them for $6 frames,
# after ($4, $5) where the previous read of this page stopped: ``chunk_page`` walks
# the (sensor_id, start_ts) key, looking back as far as the longest chunk ever
# stored, and marks the first row past what was asked for as the boundary.
_CHUNKS = """
SELECT f.start_ts, f.seq, f.received_at, k.boundary, array_send(f.ts) AS ts{columns}
FROM chunk_page($1, $2, $3, $4, $5, $6) AS k
JOIN chunk_frames f ON f.sensor_id = $1 AND f.start_ts = k.start_ts AND f.seq = k.seq
ORDER BY f.start_ts, f.seq
"""


async def list_sensors(
    pool: Connections, *, after: str | None = None, limit: int = MAX_SENSORS_PAGE
) -> list[Sensor]:
    """Sensors in id order, after ``after``, at most ``limit``."""
    sql = _SUMMARY.format(where="WHERE sensor_id > $1") + " LIMIT $2"
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, after or "", limit)
    return [Sensor(*row[:5]) for row in rows]


async def sensor_status(pool: Connections, sensor_id: str) -> SensorStatus | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_SUMMARY.format(where="WHERE sensor_id = $1"), sensor_id)
        if row is None:
            return None
        expired = row["expired_through_seq"]
        kept_from = 0 if expired is None else expired + 1
        missing = []
        # Every seq from the first kept to the last is there (the count says so):
        # no gap, and no query.
        if row["chunks"] < row["last_seq"] - kept_from + 1:
            missing = await _missing_seq(
                conn, sensor_id, row["last_seq"], -1 if expired is None else expired
            )
    return SensorStatus(
        summary=Sensor(*row[:5]),
        last_seq=row["last_seq"],
        missing_seq=missing,
        last_received_at=row["last_received_at"],
    )


async def _missing_seq(
    conn: asyncpg.Connection, sensor_id: str, last_seq: int, expired: int
) -> list[tuple[int, int]]:
    """The first ``MAX_MISSING_RANGES`` gaps of the sensor's seqs between the last one
    retention removed and ``last_seq``, which counts as received."""
    row = await conn.fetchrow(_RUNS, sensor_id, expired, last_seq, MAX_MISSING_RANGES + 1)
    above, asked = row["above"], row["asked"]
    runs = [(first, last) for first, last in (*row["fresh"], *row["straddling"])]
    page = [(first, last) for first, last in row["folded"]]
    while True:
        runs += page
        complete = len(page) < asked
        # Past the last run read, folded runs not read yet may cover seqs.
        below = last_seq if complete else min(last_seq, page[-1][1])
        missing = seqruns.gaps(runs, above=above, below=below, limit=MAX_MISSING_RANGES)
        if complete or len(missing) >= MAX_MISSING_RANGES:
            return missing
        # Delta runs overlapping folded ones (a chunk stored again after retention
        # took it) closed more gaps than ``asked`` allowed for: read on.
        more = await conn.fetch(_MORE_RUNS, sensor_id, page[-1][0], last_seq, asked)
        page = [(first, last) for first, last in more]


async def features(
    pool: Connections,
    sensor_id: str,
    *,
    start: datetime,
    end: datetime,
    fields: Sequence[str],
    limit: int,
    after_ts: datetime | None = None,
) -> FeaturePage:
    """Frames with ``start <= ts < end`` (and ``ts > after_ts``), oldest first.

    Where two chunks of the sensor hold the same instant, the one received first
    gives the frame. Each page reads only the chunk rows it needs, however deep
    into the range it starts, in one round trip unless frames before the range or
    instants held twice leave it short.
    """
    unknown = [name for name in fields if name not in FEATURE_FIELDS]
    if unknown:
        raise ValueError(f"unknown feature fields: {unknown}")
    low = start if after_ts is None else max(start, after_ts + _MICROSECOND)
    sql = _CHUNKS.format(columns="".join(f", array_send({name}) AS {name}" for name in fields))
    rows: list[Any] = []
    times: list[np.ndarray] = []  # each read's frame times
    counts: list[int] = []  # frames per row
    key: tuple[datetime, int] = (datetime.min.replace(tzinfo=low.tzinfo), -1)
    wanted = ask = limit + 1
    async with pool.acquire() as conn:
        while True:
            batch = await conn.fetch(sql, sensor_id, low, end, *key, ask)
            rows += batch
            read_ts, sizes = pgcopy.decode_timestamps([row["ts"] for row in batch])
            times.append(read_ts)
            counts += sizes
            if not batch or not batch[-1]["boundary"]:
                boundary = None  # every chunk of the range is read
                break
            # Chunks not read yet start at or after this: earlier frames are final.
            boundary = batch[-1]["start_ts"]
            so_far = np.concatenate(times)
            ready = int(np.count_nonzero((so_far >= _micros(low)) & (so_far < _micros(boundary))))
            if ready >= wanted:
                break
            # Frames before the range or at instants held twice: read on.
            key = (boundary, batch[-1]["seq"])
            ask = wanted - ready
    return _page(
        rows,
        np.concatenate(times),
        counts,
        fields,
        low=low,
        end=end,
        boundary=boundary,
        limit=limit,
    )


def _micros(moment: datetime) -> int:
    return (moment - pgcopy.UNIX_EPOCH) // _MICROSECOND


def _page(
    rows: list[Any],
    ts: np.ndarray,
    counts: list[int],
    fields: Sequence[str],
    *,
    low: datetime,
    end: datetime,
    boundary: datetime | None,
    limit: int,
) -> FeaturePage:
    if not rows:
        empty = {name: np.empty(0, np.float32) for name in fields}
        return FeaturePage(np.empty(0, np.int64), dict[str, Column](empty), more=False)
    hi = _micros(end) if boundary is None else min(_micros(end), _micros(boundary))
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["received_at"], rows[i]["seq"]))
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(len(rows))
    # Time order; among frames at one instant, the chunk received first.
    by_time = np.lexsort((np.repeat(rank, counts), ts))
    ts_sorted = ts[by_time]
    keep = (ts_sorted >= _micros(low)) & (ts_sorted < hi)
    keep[1:] &= ts_sorted[1:] != ts_sorted[:-1]
    chosen = by_time[keep]
    more = len(chosen) > limit or boundary is not None
    chosen = chosen[:limit]
    columns: dict[str, Column] = {}
    for name in fields:
        values, sizes = pgcopy.decode_reals([row[name] for row in rows])
        if name not in ARRAY_FIELDS:
            columns[name] = values[chosen]
            continue
        widths = {size // count for size, count in zip(sizes, counts, strict=True)}
        if len(widths) == 1:
            columns[name] = values.reshape(len(ts), widths.pop())[chosen]
        else:  # chunks stored under other settings: one array per frame
            per_frame = [
                row
                for part, count in zip(np.split(values, np.cumsum(sizes)[:-1]), counts, strict=True)
                for row in part.reshape(count, len(part) // count)
            ]
            columns[name] = [per_frame[j] for j in chosen]
    return FeaturePage(ts[chosen], columns, more)
