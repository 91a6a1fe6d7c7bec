"""Downsampled reads of one sensor over a day, a week and a month, aggregated by
PostgreSQL, before and after chunk rows carried their partial aggregates.

    .venv/bin/python bench/downsample.py [--days 7] [--phase-us 371234]
                                         [--runs 5] [--long-runs 2] [--baseline-runs 1]
                                         [--page 5000] [--keep]

Fill: a fresh database migrated up to, not including, migration 0006 (chunk rows
without partial aggregates, as they were before it), with the day partitions from
2026-01-01 on; one sensor's chunks of 1 s of 16 kHz audio for ``--days`` days (30
frames each with the default n_fft and hop: 2,592,000 frames a day), chunk k
starting ``k`` seconds plus ``--phase-us`` after midnight UTC (sensor clocks do not
cut chunks on whole seconds; 0 puts every chunk inside one 1 s bucket). The
``chunk_frames`` rows are built with numpy in the stored binary COPY format, 3,600
rows at a time and a column at a time for all of them (random features), and
copied in; the row layout is checked byte for byte against ``pgcopy.chunk_row``
first (the layout before 0006 is the same less the partial columns). Then
``frame_span`` is set, the partitions vacuumed and their key columns analyzed
(autovacuum is off for them, so nothing runs behind the timings).

Scenarios, each over every scalar field, ``agg=mean`` unless said, one call with a
limit above the number of buckets: the first day at 100 ms, 1 s (also ``min``),
1 min and 1 h; with ``--days 7`` or more the first week at 1 min, 1 h (also
``max``) and 1 d; with ``--days 28`` or more all the days (a month at 31) at 1 h and
1 d. Those of a day are timed ``--runs`` times, the longer ones ``--long-runs``
times, each after one unmeasured call.

Before: the scenarios with ``buckets()`` running the statement it ran before
migration 0006 (kept below as ``before_sql``), which unnests every chunk's arrays.
Then migration 0006 is applied (timed: it computes the partials of every stored
row and rebuilds the primary key with them), the partitions vacuumed again (as
autovacuum would after it; index-only scans need the visibility map it sets), and
after: the same scenarios with ``buckets()`` as it is, each answer compared with
the one before (the same buckets and counts, the same minima and maxima, means
within two float32 ulps: the partials are added in another order).

After, also: the first day at 1 s in pages of ``--page`` buckets (``after_ts`` each
time: what a streamed answer does), all pages together; at 1 s aggregated over
``sensor_frames()`` (the exact per-frame function, a ``DISTINCT ON`` over every
frame), ``--baseline-runs`` times; the same 86,400 buckets fetched from a table of
them, as one row of binary arrays decoded with numpy (what ``buckets()`` does) and
as one row per bucket turned into numpy arrays in Python.

Write path: one more day written as a replica older than 0006 writes it (rows
without partials: NULL there) and one as the current one does, each by COPY,
timed; the bytes of each row format and of the stored row and its index entry; the
worker's time to encode a chunk's row (``chunk_row``) and the share of it spent on
the partials; then each of the two days read at 1 h and 1 s (rows without partials
are read from their arrays).

Checks the 1 s answer (a bucket per second, and every frame of the day counted) and
the 1 h means of ``rms`` against numpy over the generated values. Prints the figures
and writes them to ``bench/results/downsample-<UTC time>.json``. Drops its database
at the end unless ``--keep``. Needs the local PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import struct
import sys
import time
import timeit
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import numpy as np
from memory import PG, write_result

from soundstream.core.fields import SCALARS, FeatureParams, Features
from soundstream.core.records import Job, frame_times_us
from soundstream.core.timefmt import from_micros, to_micros
from soundstream.core.wire import Chunk
from soundstream.store import downsample, pgcopy, upkeep
from soundstream.store.migrate import available, migrate
from soundstream.store.write import init_connection

PARAMS = FeatureParams()
RATE = 16000
FRAMES = 1 + (RATE - PARAMS.n_fft) // PARAMS.hop  # 30 frames in 1 s
STEP_US = PARAMS.hop * 1_000_000 // RATE  # 32 ms between frames
DAY = date(2026, 1, 1)
T0_US = to_micros(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC))
SENSOR = "bench-downsample"
SECOND = 1_000_000
DAY_S = 86_400
BATCH = 3600  # chunk rows built and sent at a time
_INT8 = np.dtype([("len", ">i4"), ("v", ">i8")])
_FLOAT4 = np.dtype([("len", ">i4"), ("v", ">f4")])
KEY_COLUMNS = "sensor_id, start_ts, seq, last_ts, received_at, n_frames"
PARTIALS_MIGRATION = 6  # 0006_chunk_stats: the partial columns
PARTIAL_COLUMNS = tuple(
    pgcopy.partial_column(name, partial) for name in SCALARS for partial in pgcopy.PARTIALS
)
BEFORE_COLUMNS = tuple(c for c in pgcopy.COLUMNS if c not in PARTIAL_COLUMNS)


# -- the stored rows, built with numpy -----------------------------------------------


def row_dtype(sensor: str, *, partials: bool) -> np.dtype[np.void]:
    """One ``chunk_frames`` row of a 1 s chunk in binary COPY format, as a record:
    every length word and array header has a field, so rows are filled a column at
    a time for a whole batch. Without ``partials``: the row as written before
    migration 0006."""

    def array(name: str, element: np.dtype[np.void], count: int) -> list[Any]:
        # length word, ndim, has-nulls, element oid, length, lower bound; the elements
        return [(f"{name}_head", ">i4", (6,)), (name, element, (count,))]

    fields: list[Any] = [("columns", ">i2"), ("sensor_len", ">i4"), ("sensor", f"S{len(sensor)}")]
    for name in ("start_ts", "seq", "last_ts", "received_at"):
        fields += [(f"{name}_len", ">i4"), (name, ">i8")]
    fields += [("n_frames_len", ">i4"), ("n_frames", ">i4")]
    fields += array("ts", _INT8, FRAMES)
    for name in SCALARS:
        fields += array(name, _FLOAT4, FRAMES)
    fields += array("mel", _FLOAT4, FRAMES * PARAMS.n_mels)
    fields += array("mfcc", _FLOAT4, FRAMES * PARAMS.n_mfcc)
    if partials:
        for column in PARTIAL_COLUMNS:
            kind = ">f8" if column.endswith("_sum") else ">f4"
            fields += [(f"{column}_len", ">i4"), (column, kind)]
    return np.dtype(fields)


def build_rows(
    first: int, count: int, phase_us: int, rng: np.random.Generator, *, partials: bool
) -> tuple[bytes, dict[str, np.ndarray]]:
    """Rows of chunks ``first`` .. ``first + count - 1``, and their scalar features
    (chunks x frames each)."""
    rows = np.zeros(count, row_dtype(SENSOR, partials=partials))
    seq = np.arange(first, first + count, dtype=np.int64)
    start = T0_US + seq * SECOND + phase_us
    rows["columns"] = len(pgcopy.COLUMNS if partials else BEFORE_COLUMNS)
    rows["sensor_len"] = len(SENSOR)
    rows["sensor"] = SENSOR.encode()
    for name, value in (
        ("start_ts", start - pgcopy.PG_EPOCH_US),
        ("seq", seq),
        ("last_ts", start + (FRAMES - 1) * STEP_US - pgcopy.PG_EPOCH_US),
        ("received_at", start + 1_100_000 - pgcopy.PG_EPOCH_US),
    ):
        rows[f"{name}_len"] = 8
        rows[name] = value
    rows["n_frames_len"] = 4
    rows["n_frames"] = FRAMES

    def fill(name: str, element: np.dtype[np.void], oid: int, values: np.ndarray) -> None:
        n = values.shape[1]
        rows[f"{name}_head"] = (20 + n * element.itemsize, 1, 0, oid, n, 1)
        rows[name]["len"] = element["v"].itemsize
        rows[name]["v"] = values

    times = start[:, None] + np.arange(FRAMES) * STEP_US
    fill("ts", _INT8, pgcopy.TIMESTAMPTZ_OID, times - pgcopy.PG_EPOCH_US)
    scalars = {name: rng.random((count, FRAMES), np.float32) for name in SCALARS}
    for name, values in scalars.items():
        fill(name, _FLOAT4, pgcopy.FLOAT4_OID, values)
    for name, width in (("mel", PARAMS.n_mels), ("mfcc", PARAMS.n_mfcc)):
        values = rng.standard_normal((count, FRAMES * width), np.float32)
        fill(name, _FLOAT4, pgcopy.FLOAT4_OID, values)
    if partials:  # as pgcopy.partials computes them, for all rows at once
        for name, values in scalars.items():
            for partial, value, size in (
                ("sum", np.add.accumulate(values, axis=1, dtype=np.float64)[:, -1], 8),
                ("min", np.fmin.reduce(values, axis=1), 4),
                ("max", np.maximum.reduce(values, axis=1), 4),
            ):
                column = pgcopy.partial_column(name, partial)
                rows[f"{column}_len"] = size
                rows[column] = value
    return rows.tobytes(), scalars


def check_layout(phase_us: int) -> None:
    """The numpy rows are the bytes the write path makes for the same chunk; the rows
    before migration 0006 are those less the partial columns."""
    rows, _ = build_rows(7, 1, phase_us, np.random.default_rng(0), partials=True)
    record = np.frombuffer(rows, row_dtype(SENSOR, partials=True))[0]

    def column(name: str, width: int = 1) -> np.ndarray:
        return np.asarray(record[name]["v"], np.float32).reshape(FRAMES, width).squeeze()

    features = Features(
        *(column(name) for name in SCALARS),
        mel=column("mel", PARAMS.n_mels),
        mfcc=column("mfcc", PARAMS.n_mfcc),
    )
    start_ns = (T0_US + 7 * SECOND + phase_us) * 1000
    received = int(record["received_at"]) + pgcopy.PG_EPOCH_US
    job = Job(Chunk(SENSOR, 7, start_ns, RATE, np.zeros(RATE, np.float32)), received)
    encoded = pgcopy.chunk_row(job, PARAMS.hop, features)
    expected_ts = frame_times_us(start_ns, FRAMES, PARAMS.hop, RATE)
    assert (record["ts"]["v"] + pgcopy.PG_EPOCH_US == expected_ts).all()
    if encoded.row != rows:
        raise AssertionError("the bench's rows differ from pgcopy.chunk_row's")
    assert struct.unpack_from(">h", rows)[0] == len(pgcopy.COLUMNS)
    before, _ = build_rows(7, 1, phase_us, np.random.default_rng(0), partials=False)
    assert len(before) == len(rows) - len(pgcopy.partials(np.zeros((len(SCALARS), 1), np.float32)))
    assert before[2:] == rows[2 : len(before)]


# -- fill ----------------------------------------------------------------------------


def days_of(first_day: int, days: int) -> list[date]:
    return [DAY + timedelta(days=k) for k in range(first_day, first_day + days)]


async def prepare(conn: asyncpg.Connection, days: int) -> None:
    """Day partitions for the fill and the write path's two days, and the day either
    side; no autovacuum behind the timings."""
    await init_connection(conn)
    every = days_of(-1, days + 4)
    await upkeep.ensure_partitions(conn, every)
    for day in every:
        await conn.execute(
            f"ALTER TABLE {upkeep.partition_name(day)} "
            "SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)"
        )
    span_us = (FRAMES - 1) * STEP_US
    await conn.execute("UPDATE frame_span SET longest = $1 * interval '1 microsecond'", span_us)


async def fill(
    conn: asyncpg.Connection, first: int, seconds: int, phase_us: int, *, partials: bool
) -> tuple[float, np.ndarray]:
    """Copy the chunks ``first`` .. ``first + seconds - 1`` in; the seconds the copy
    took, and the ``rms`` values of the first day filled."""
    rng = np.random.default_rng(first + 1)
    rms: list[np.ndarray] = []

    async def source() -> AsyncIterator[bytes]:
        yield pgcopy.HEADER
        for at in range(first, first + seconds, BATCH):
            count = min(BATCH, first + seconds - at)
            rows, scalars = build_rows(at, count, phase_us, rng, partials=partials)
            if at - first < DAY_S:
                rms.append(scalars["rms"])
            yield rows
        yield pgcopy.TRAILER

    columns = pgcopy.COLUMNS if partials else BEFORE_COLUMNS
    started = time.perf_counter()
    await conn.copy_to_table("chunk_frames", source=source(), columns=columns, format="binary")
    return time.perf_counter() - started, np.concatenate(rms)[:DAY_S]


async def vacuum(conn: asyncpg.Connection, days: list[date]) -> float:
    started = time.perf_counter()
    for day in days:
        name = upkeep.partition_name(day)
        await conn.execute(f"VACUUM (PROCESS_TOAST FALSE) {name}")
        await conn.execute(f"ANALYZE {name} ({KEY_COLUMNS})")
    return time.perf_counter() - started


async def sizes(conn: asyncpg.Connection, day: date) -> dict[str, int]:
    """Bytes a chunk row takes in the day's heap and in its indexes (without TOAST)."""
    name = upkeep.partition_name(day)
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, pg_relation_size('{name}') AS heap, "
        f"pg_indexes_size('{name}') AS indexes FROM {name}"
    )
    n = max(1, row["n"])
    return {"heap_b_row": round(row["heap"] / n), "index_b_row": round(row["indexes"] / n)}


# -- the statement before migration 0006 -----------------------------------------------

# ``buckets()`` ran this before chunk rows had partial aggregates: a chunk inside one
# bucket had its scalar arrays unnested and aggregated on its own, every other one
# unnested per frame. Kept verbatim, to time against on the same rows.
_BEFORE_SETTINGS = "SET LOCAL jit = off"
_BEFORE_PARTIAL = {"mean": "sum({}::float8)", "min": "min({})", "max": "max({})"}
_BEFORE_FINAL = {"mean": "(sum({}) / sum(frames))::real", "min": "min({})", "max": "max({})"}
_BEFORE_OF_RANGE = """c.sensor_id = $1 AND c.start_ts < $3
          AND c.start_ts >= $2::timestamptz - (SELECT longest FROM frame_span)
          AND c.last_ts >= $2"""
_BEFORE_INSIDE = """c.start_ts >= $2 AND c.last_ts < $3
          AND date_bin($4::interval, c.start_ts, $5::timestamptz)
              = date_bin($4::interval, c.last_ts, $5::timestamptz)"""
_BEFORE_NOT_SHARED = "(c.start_ts, c.seq) NOT IN (SELECT start_ts, seq FROM shared)"
_BEFORE = """
WITH shared AS (
    SELECT start_ts, seq FROM (
        SELECT c.start_ts, c.seq,
               lead(c.start_ts) OVER w <= c.last_ts
               OR max(c.last_ts) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                  >= c.start_ts AS meets
        FROM chunk_frames c
        WHERE {of_range}
        WINDOW w AS (ORDER BY c.start_ts, c.seq)
    ) AS spans
    WHERE meets
),
partials AS (
    SELECT date_bin($4::interval, c.start_ts, $5::timestamptz) AS bucket,
           cardinality(c.ts) AS frames{inside_columns}
    FROM chunk_frames c{inside_join}
    WHERE {of_range}
      AND {inside}
      AND {not_shared}
    UNION ALL
    SELECT p.*
    FROM chunk_frames c CROSS JOIN LATERAL (
        SELECT date_bin($4::interval, f.ts, $5::timestamptz) AS bucket,
               count(*)::integer AS frames{partials}
        FROM (SELECT unnest(c.ts) AS ts{unnest}) AS f
        WHERE f.ts >= $2 AND f.ts < $3
        GROUP BY 1
    ) AS p
    WHERE {of_range}
      AND NOT ({inside})
      AND {not_shared}
    UNION ALL
    SELECT date_bin($4::interval, ts, $5::timestamptz), count(*)::integer{partials}
    FROM (
        SELECT DISTINCT ON (ts) ts{names} FROM (
            SELECT c.received_at, c.seq, unnest(c.ts) AS ts{unnest}
            FROM chunk_frames c JOIN shared USING (start_ts, seq)
            WHERE {of_range}
        ) AS overlapping
        WHERE ts >= $2 AND ts < $3
        ORDER BY ts, received_at, seq
    ) AS first_received
    GROUP BY 1
),
buckets AS (
    SELECT bucket, sum(frames) AS frames{finals}
    FROM partials
    GROUP BY bucket
    ORDER BY bucket
    LIMIT $6::bigint
)
SELECT array_send(array_agg(bucket)) AS ts, array_send(array_agg(frames)) AS count{sends},
       CASE WHEN $3 < $7 THEN (extract(epoch FROM (
           SELECT CASE
               WHEN EXISTS (
                   SELECT FROM chunk_frames c
                   WHERE c.sensor_id = $1 AND c.start_ts < $3
                     AND c.start_ts >= $3::timestamptz - (SELECT longest FROM frame_span)
                     AND c.last_ts >= $3)
               THEN $3
               ELSE (SELECT min(c.start_ts) FROM chunk_frames c
                     WHERE c.sensor_id = $1 AND c.start_ts >= $3 AND c.start_ts < $7)
           END)) * 1000000)::bigint END AS next_us
FROM buckets
"""


def before_sql(fields: Sequence[str], agg: str) -> str:
    partial, final = _BEFORE_PARTIAL[agg], _BEFORE_FINAL[agg]
    inside_join = ""
    if fields:
        inside_join = (
            " CROSS JOIN LATERAL (\n        SELECT "
            + ", ".join(f"{partial.format(name)} AS {name}" for name in fields)
            + "\n        FROM (SELECT "
            + ", ".join(f"unnest(c.{name}) AS {name}" for name in fields)
            + ") AS f\n    ) AS p"
        )
    return _BEFORE.format(
        of_range=_BEFORE_OF_RANGE,
        inside=_BEFORE_INSIDE,
        not_shared=_BEFORE_NOT_SHARED,
        inside_join=inside_join,
        inside_columns="".join(f", p.{name}" for name in fields),
        names="".join(f", {name}" for name in fields),
        unnest="".join(f", unnest(c.{name}) AS {name}" for name in fields),
        partials="".join(f", {partial.format(name)} AS {name}" for name in fields),
        finals="".join(f", {final.format(name)} AS {name}" for name in fields),
        sends="".join(f", array_send(array_agg({name})) AS {name}" for name in fields),
    )


@contextlib.contextmanager
def statement_before() -> Iterator[None]:
    """``downsample.buckets()`` running the statement before migration 0006."""
    saved = downsample.bucket_sql, downsample._SETTINGS
    downsample.bucket_sql = before_sql
    downsample._SETTINGS = _BEFORE_SETTINGS
    try:
        yield
    finally:
        downsample.bucket_sql, downsample._SETTINGS = saved


# -- timings -------------------------------------------------------------------------


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[list[float], Any]:
    """One unmeasured call, then ``runs`` measured ones: seconds each, last result."""
    result = await call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - started)
    return times, result


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "runs_s": [round(t, 4) for t in times],
    }


async def span(
    pool: asyncpg.Pool, width: int, agg: str, seconds: int, *, first: int = 0
) -> downsample.BucketPage:
    """``seconds`` from chunk ``first`` on at ``width``, in one call."""
    start = T0_US + first * SECOND
    return await downsample.buckets(
        pool,
        SENSOR,
        start=from_micros(start),
        end=from_micros(start + seconds * SECOND),
        fields=SCALARS,
        resolution_us=width,
        agg=agg,
        limit=seconds * SECOND // width + 1,
    )


async def paged(pool: asyncpg.Pool, seconds: int, page: int) -> tuple[int, int]:
    """The whole day at 1 s, ``page`` buckets a call; (buckets, calls)."""
    after: datetime | None = None
    total = calls = 0
    while True:
        got = await downsample.buckets(
            pool,
            SENSOR,
            start=from_micros(T0_US),
            end=from_micros(T0_US + seconds * SECOND),
            fields=SCALARS,
            resolution_us=SECOND,
            agg="mean",
            limit=page,
            after_ts=after,
        )
        total += len(got)
        calls += 1
        if not got.more:
            return total, calls
        after = from_micros(int(got.ts[-1]))


# The same buckets from the exact per-frame function the read path started from:
# ``sensor_frames()`` orders every frame of the range to keep the first received.
_BASELINE = """
SELECT array_send(array_agg(bucket)) AS ts, array_send(array_agg(frames)) AS count{sends}
FROM (
    SELECT date_bin($4::interval, ts, $5::timestamptz) AS bucket, count(*) AS frames{means}
    FROM sensor_frames($1, $2, $3)
    GROUP BY 1
    ORDER BY 1
) AS b
"""


async def baseline(pool: asyncpg.Pool, seconds: int) -> bytes:
    names = list(SCALARS)
    sql = _BASELINE.format(
        sends="".join(f", array_send(array_agg({name})) AS {name}" for name in names),
        means="".join(f", avg({name})::real AS {name}" for name in names),
    )
    start, end = from_micros(T0_US), from_micros(T0_US + seconds * SECOND)
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL jit = off")
        row = await conn.fetchrow(sql, SENSOR, start, end, timedelta(seconds=1), start)
    ts: bytes = row["ts"]
    return ts


_TABLE = "CREATE TEMP TABLE day_buckets AS SELECT * FROM unnest($1::timestamptz[], $2::bigint[]"
_ARRAYS = (
    "SELECT array_send(array_agg(bucket)) AS ts, array_send(array_agg(frames)) AS count{sends} "
    "FROM (SELECT * FROM day_buckets ORDER BY bucket) AS b"
)
_ROWS = "SELECT * FROM day_buckets ORDER BY bucket"


async def decoding(pool: asyncpg.Pool, page: downsample.BucketPage, runs: int) -> dict[str, Any]:
    """The same buckets, already aggregated, fetched both ways."""
    names = list(SCALARS)
    sends = "".join(f", array_send(array_agg({name})) AS {name}" for name in names)
    async with pool.acquire() as conn:
        await conn.execute(
            _TABLE + "".join(f", ${i + 3}::real[]" for i in range(len(names))) + ") AS b"
            "(bucket, frames, " + ", ".join(names) + ")",
            [from_micros(int(t)) for t in page.ts],
            page.count.tolist(),
            *(np.asarray(page.columns[name]).tolist() for name in names),
        )
        await conn.execute("ANALYZE day_buckets")

        async def arrays() -> dict[str, np.ndarray]:
            row = await conn.fetchrow(_ARRAYS.format(sends=sends))
            ts, _ = pgcopy.decode_timestamps([row["ts"]])
            raw = row["count"]
            out = {"ts": ts, "count": np.frombuffer(raw, _INT8, offset=20)["v"].astype(np.int64)}
            for name in names:
                out[name], _ = pgcopy.decode_reals([row[name]])
            return out

        async def rows() -> dict[str, np.ndarray]:
            records = await conn.fetch(_ROWS)
            n = len(records)
            out = {
                "ts": np.fromiter((to_micros(r[0]) for r in records), np.int64, n),
                "count": np.fromiter((r[1] for r in records), np.int64, n),
            }
            for i, name in enumerate(names, start=2):
                out[name] = np.fromiter((r[i] for r in records), np.float32, n)
            return out

        array_times, by_arrays = await timed(arrays, runs)
        row_times, by_rows = await timed(rows, runs)
        await conn.execute("DROP TABLE day_buckets")
    for name, values in by_arrays.items():
        assert np.array_equal(values, by_rows[name]), name
    assert np.array_equal(by_arrays["ts"], page.ts)
    return {"buckets": len(page), "arrays": summary(array_times), "rows": summary(row_times)}


def check(pages: dict[str, downsample.BucketPage], rms: np.ndarray, phase_us: int) -> None:
    """The first day's answers at 1 s and 1 h against numpy over the generated frames."""
    seconds = len(rms)
    ts = T0_US + phase_us + np.arange(seconds)[:, None] * SECOND + np.arange(FRAMES) * STEP_US
    inside = ts < T0_US + seconds * SECOND
    second = pages["day 1s"]
    assert len(second) == seconds, len(second)
    assert int(second.count.sum()) == int(inside.sum())
    hour = pages["day 1h"]
    starts = (ts[inside] - T0_US) // (3600 * SECOND)
    sums = np.bincount(starts, weights=rms[inside].astype(np.float64))
    counts = np.bincount(starts)
    want = (sums / counts).astype(np.float32)
    np.testing.assert_allclose(hour.columns["rms"], want, rtol=3e-7)
    np.testing.assert_array_equal(hour.count, counts)


def scenarios(days: int) -> list[tuple[str, int, int, str]]:
    """(label, seconds from the first chunk, resolution, aggregate)."""
    minute, hour = 60 * SECOND, 3600 * SECOND
    chosen = [
        ("day 100ms", DAY_S, 100_000, "mean"),
        ("day 1s", DAY_S, SECOND, "mean"),
        ("day 1s min", DAY_S, SECOND, "min"),
        ("day 1m", DAY_S, minute, "mean"),
        ("day 1h", DAY_S, hour, "mean"),
    ]
    if days >= 7:
        week = 7 * DAY_S
        chosen += [
            ("week 1m", week, minute, "mean"),
            ("week 1h", week, hour, "mean"),
            ("week 1h max", week, hour, "max"),
            ("week 1d", week, downsample.MAX_RESOLUTION_US, "mean"),
        ]
    if days >= 28:
        whole = days * DAY_S
        name = "month" if days <= 31 else f"{days} days"
        chosen += [
            (f"{name} 1h", whole, hour, "mean"),
            (f"{name} 1d", whole, downsample.MAX_RESOLUTION_US, "mean"),
        ]
    return chosen


async def time_scenarios(
    pool: asyncpg.Pool, args: argparse.Namespace, phase: str
) -> tuple[dict[str, Any], dict[str, downsample.BucketPage]]:
    calls: dict[str, Any] = {}
    pages: dict[str, downsample.BucketPage] = {}
    for label, seconds, width, agg in scenarios(args.days):
        runs = args.runs if seconds <= DAY_S else args.long_runs
        times, page = await timed(lambda s=seconds, w=width, a=agg: span(pool, w, a, s), runs)
        pages[label] = page
        calls[label] = {"buckets": len(page), **summary(times)}
        show(f"{phase}: {label}", len(page), times)
    return calls, pages


def same_answer(before: downsample.BucketPage, after: downsample.BucketPage, agg: str) -> None:
    """The same buckets and counts; min and max equal; means within two float32 ulps."""
    np.testing.assert_array_equal(after.ts, before.ts)
    np.testing.assert_array_equal(after.count, before.count)
    for name in SCALARS:
        got, want = after.columns[name], before.columns[name]
        if agg == "mean":
            np.testing.assert_allclose(got, want, rtol=2 * float(np.finfo(np.float32).eps))
        else:
            np.testing.assert_array_equal(got, want)


def encoding() -> dict[str, float]:
    """The worker's microseconds to encode a 1 s chunk's row, and to compute and
    encode its partials alone."""
    rng = np.random.default_rng(3)
    features = Features(
        *(rng.random(FRAMES, np.float32) for _ in SCALARS),
        mel=rng.random((FRAMES, PARAMS.n_mels), np.float32),
        mfcc=rng.random((FRAMES, PARAMS.n_mfcc), np.float32),
    )
    job = Job(Chunk(SENSOR, 7, T0_US * 1000, RATE, np.zeros(RATE, np.float32)), T0_US)
    scalars = np.stack([getattr(features, name) for name in SCALARS])

    def best(call: Callable[[], Any]) -> float:
        return min(timeit.repeat(call, number=2000, repeat=7)) / 2000 * 1e6

    return {
        "chunk_row_us": round(best(lambda: pgcopy.chunk_row(job, PARAMS.hop, features)), 2),
        "partials_us": round(best(lambda: pgcopy.partials(scalars)), 2),
    }


async def write_path(
    pool: asyncpg.Pool, conn: asyncpg.Connection, args: argparse.Namespace
) -> dict[str, Any]:
    """A day written without partials (a replica before 0006) and one with, each
    timed; then each read at 1 h and 1 s."""
    out: dict[str, Any] = {"encode": encoding()}
    for form, first_day, partials in (("without", args.days, False), ("with", args.days + 1, True)):
        took, _ = await fill(conn, first_day * DAY_S, DAY_S, args.phase_us, partials=partials)
        day = DAY + timedelta(days=first_day)
        await vacuum(conn, [day])
        copy_bytes = len(
            build_rows(0, 1, args.phase_us, np.random.default_rng(0), partials=partials)[0]
        )
        entry: dict[str, Any] = {
            "copy_s": round(took, 2),
            "copy_us_row": round(took / DAY_S * 1e6, 1),
            "copy_bytes_row": copy_bytes,
            **await sizes(conn, day),
        }
        for label, width in (("1h", 3600 * SECOND), ("1s", SECOND)):
            times, page = await timed(
                lambda w=width, f=first_day: span(pool, w, "mean", DAY_S, first=f * DAY_S),
                args.runs,
            )
            entry[label] = {"buckets": len(page), **summary(times)}
            show(f"a day written {form} partials, {label}", len(page), times)
        out[f"{form} partials"] = entry
        print(
            f"  written {form} partials: copy {entry['copy_us_row']} us a row, "
            f"{copy_bytes} bytes a row in COPY, {entry['heap_b_row']} in the heap, "
            f"{entry['index_b_row']} in indexes",
            flush=True,
        )
    print(
        f"  encoding a chunk's row: {out['encode']['chunk_row_us']} us, of which the "
        f"partials {out['encode']['partials_us']} us",
        flush=True,
    )
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    check_layout(args.phase_us)
    name = f"bench_downsample_{uuid.uuid4().hex[:8]}"
    database = PG.rsplit("/", 1)[0] + "/" + name
    await migrate(database, until=PARTIALS_MIGRATION - 1)  # as a release before 0006 left it
    try:
        seconds = args.days * DAY_S
        print(f"filling {seconds:,} chunks of 1 s ({seconds * FRAMES:,} frames) before 0006")
        results: dict[str, Any] = {}
        conn = await asyncpg.connect(database)
        try:
            await prepare(conn, args.days)
            copy_s, rms = await fill(conn, 0, seconds, args.phase_us, partials=False)
            filled = days_of(0, args.days)
            results["fill"] = {"copy_s": round(copy_s, 2)}
            results["fill"]["vacuum_analyze_s"] = round(await vacuum(conn, filled), 2)
            results["sizes_before"] = await sizes(conn, DAY)
            print(", ".join(f"{k} {v}" for k, v in results["fill"].items()), flush=True)
            async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
                with statement_before():
                    results["before"], before = await time_scenarios(pool, args, "before")
                check(before, rms, args.phase_us)
            started = time.perf_counter()
            assert await migrate(database) == [
                m.version for m in available() if m.version >= PARTIALS_MIGRATION
            ]
            results["migration_0006_s"] = round(time.perf_counter() - started, 2)
            results["vacuum_after_migration_s"] = round(await vacuum(conn, filled), 2)
            results["sizes_after"] = await sizes(conn, DAY)
            print(
                f"migration 0006 {results['migration_0006_s']} s over {seconds:,} chunk rows, "
                f"vacuum after it {results['vacuum_after_migration_s']} s; a row "
                f"{results['sizes_before']} before, {results['sizes_after']} after",
                flush=True,
            )
            async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
                results["after"], after = await time_scenarios(pool, args, "after")
                check(after, rms, args.phase_us)
                for label, _, _, agg in scenarios(args.days):
                    same_answer(before[label], after[label], agg)
                print("after: every answer the same as before")
                for label in results["after"]:
                    was, now = results["before"][label], results["after"][label]
                    ratio = was["median_s"] / now["median_s"]
                    print(
                        f"{label:<16} before {was['median_s'] * 1000:9.1f} ms  "
                        f"after {now['median_s'] * 1000:9.1f} ms  {ratio:6.2f}x",
                        flush=True,
                    )
                results["calls"] = await day_extras(pool, args, after["day 1s"])
                results["write_path"] = await write_path(pool, conn, args)
        finally:
            await conn.close()
        return results
    finally:
        if not args.keep:
            admin = await asyncpg.connect(PG)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


async def day_extras(
    pool: asyncpg.Pool, args: argparse.Namespace, second: downsample.BucketPage
) -> dict[str, Any]:
    """The first day at 1 s paged, over ``sensor_frames()``, and fetched both ways."""
    calls: dict[str, Any] = {}
    times, (total, n) = await timed(lambda: paged(pool, DAY_S, args.page), args.runs)
    calls[f"1s mean in pages of {args.page}"] = {"buckets": total, "calls": n, **summary(times)}
    show(f"after: day 1s, {n} pages of {args.page}", total, times)
    times, ts = await timed(lambda: baseline(pool, DAY_S), args.baseline_runs)
    assert np.array_equal(pgcopy.decode_timestamps([ts])[0], second.ts)
    calls["1s mean over sensor_frames()"] = {"buckets": len(second), **summary(times)}
    show("day 1s over sensor_frames()", len(second), times)
    decode = await decoding(pool, second, args.runs)
    for way in ("arrays", "rows"):
        median = [decode[way]["median_s"]]
        show(f"fetch the 1s buckets, aggregated, as {way}", decode["buckets"], median)
    calls["fetch_aggregated"] = decode
    return calls


def show(label: str, buckets: int, times: list[float]) -> None:
    median = statistics.median(times)
    print(f"{label:<48} {buckets:>7,} buckets  median {median * 1000:9.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7, help="days of 1 s chunks to load")
    parser.add_argument(
        "--phase-us", type=int, default=371_234, help="chunk starts after each whole second"
    )
    parser.add_argument("--runs", type=int, default=5, help="measured calls over a day")
    parser.add_argument(
        "--long-runs", type=int, default=2, help="measured calls over a week or more"
    )
    parser.add_argument(
        "--baseline-runs", type=int, default=1, help="measured calls over sensor_frames()"
    )
    parser.add_argument("--page", type=int, default=5000, help="buckets a page, paged read")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    if not 0 <= args.phase_us < SECOND or args.days < 1:
        parser.error("--phase-us must be in [0, 1000000) and --days at least 1")
    try:
        result = anyio.run(bench, args)
    except KeyboardInterrupt:
        sys.exit("interrupted (database dropped)")
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "frames": args.days * DAY_S * FRAMES,
        **result,
    }
    out = write_result("downsample", document)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
