"""Downsampled reads of a whole day of one sensor, aggregated by PostgreSQL.

    .venv/bin/python bench/downsample.py [--seconds 86400] [--phase-us 371234]
                                         [--runs 5] [--baseline-runs 1]
                                         [--page 5000] [--keep]

Fill: a fresh database with the day partitions around 2026-01-01; one sensor's
``--seconds`` chunks of 1 s of 16 kHz audio (30 frames each with the default n_fft
and hop: 2,592,000 frames for a day), chunk k starting ``k`` seconds plus
``--phase-us`` after midnight UTC (sensor clocks do not cut chunks on whole seconds;
0 puts every chunk inside one 1 s bucket). The ``chunk_frames`` rows are built with
numpy in the stored binary COPY format, 3,600 rows at a time and a column at a time
for all of them (random features), and copied in; the row layout is checked byte for
byte against ``pgcopy.chunk_row`` first. Then ``frame_span`` is set, the partitions
vacuumed and their key columns analyzed (autovacuum is off for them, so nothing runs
behind the timings).

Timed, each ``--runs`` times after one unmeasured call, on a pool as the API has it:

- ``buckets()`` for the whole day, every scalar field, ``agg=mean``, at 1 s, 1 min and
  1 h (one call, a limit above the number of buckets), and at 1 s also ``min``;
- the whole day at 1 s in pages of ``--page`` buckets (``after_ts`` each time: what a
  streamed answer does), all pages together;
- the whole day at 1 s aggregated over ``sensor_frames()`` (the exact per-frame
  function, a ``DISTINCT ON`` over every frame), ``--baseline-runs`` times;
- the same 86,400 buckets fetched from a table of them: as one row of binary arrays
  decoded with numpy (what ``buckets()`` does), and as one row per bucket turned into
  numpy arrays in Python.

Checks the 1 s answer (a bucket per second, and every frame of the day counted) and
the 1 h means of ``rms`` against numpy over the generated values. Prints the figures
and writes them to ``bench/results/downsample-<UTC time>.json``. Drops its database
at the end unless ``--keep``. Needs the local PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
from soundstream.store.migrate import migrate
from soundstream.store.write import init_connection

PARAMS = FeatureParams()
RATE = 16000
FRAMES = 1 + (RATE - PARAMS.n_fft) // PARAMS.hop  # 30 frames in 1 s
STEP_US = PARAMS.hop * 1_000_000 // RATE  # 32 ms between frames
DAY = date(2026, 1, 1)
T0_US = to_micros(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC))
SENSOR = "bench-downsample"
SECOND = 1_000_000
RESOLUTIONS = {"1s": SECOND, "1m": 60 * SECOND, "1h": 3600 * SECOND}
BATCH = 3600  # chunk rows built and sent at a time
_INT8 = np.dtype([("len", ">i4"), ("v", ">i8")])
_FLOAT4 = np.dtype([("len", ">i4"), ("v", ">f4")])
KEY_COLUMNS = "sensor_id, start_ts, seq, last_ts, received_at, n_frames"


# -- the stored rows, built with numpy -----------------------------------------------


def row_dtype(sensor: str) -> np.dtype[np.void]:
    """One ``chunk_frames`` row of a 1 s chunk in binary COPY format, as a record:
    every length word and array header has a field, so rows are filled a column at
    a time for a whole batch."""

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
    return np.dtype(fields)


def build_rows(
    first: int, count: int, phase_us: int, rng: np.random.Generator
) -> tuple[bytes, dict[str, np.ndarray]]:
    """Rows of chunks ``first`` .. ``first + count - 1``, and their scalar features
    (chunks x frames each)."""
    rows = np.zeros(count, row_dtype(SENSOR))
    seq = np.arange(first, first + count, dtype=np.int64)
    start = T0_US + seq * SECOND + phase_us
    rows["columns"] = len(pgcopy.COLUMNS)
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
    return rows.tobytes(), scalars


def check_layout(phase_us: int) -> None:
    """The numpy rows are the bytes the write path makes for the same chunk."""
    rows, _ = build_rows(7, 1, phase_us, np.random.default_rng(0))
    record = np.frombuffer(rows, row_dtype(SENSOR))[0]

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


# -- fill ----------------------------------------------------------------------------


async def fill(database: str, seconds: int, phase_us: int) -> tuple[dict[str, float], np.ndarray]:
    """Load the day; the seconds each step took, and the generated ``rms`` values."""
    took: dict[str, float] = {}
    conn = await asyncpg.connect(database)
    try:
        await init_connection(conn)
        days = [DAY + timedelta(days=k) for k in range(-1, 2 + seconds // 86_400)]
        await upkeep.ensure_partitions(conn, days)
        partitions = [upkeep.partition_name(day) for day in days]
        for name in partitions:
            await conn.execute(
                f"ALTER TABLE {name} SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)"
            )
        rng = np.random.default_rng(1)
        rms: list[np.ndarray] = []

        async def source() -> AsyncIterator[bytes]:
            yield pgcopy.HEADER
            for first in range(0, seconds, BATCH):
                rows, scalars = build_rows(first, min(BATCH, seconds - first), phase_us, rng)
                rms.append(scalars["rms"])
                yield rows
            yield pgcopy.TRAILER

        started = time.perf_counter()
        await conn.copy_to_table(
            "chunk_frames", source=source(), columns=pgcopy.COLUMNS, format="binary"
        )
        took["copy_s"] = time.perf_counter() - started
        span_us = (FRAMES - 1) * STEP_US
        await conn.execute("UPDATE frame_span SET longest = $1 * interval '1 microsecond'", span_us)
        started = time.perf_counter()
        for name in partitions:
            await conn.execute(f"VACUUM (PROCESS_TOAST FALSE) {name}")
            await conn.execute(f"ANALYZE {name} ({KEY_COLUMNS})")
        took["vacuum_analyze_s"] = time.perf_counter() - started
        stored = await conn.fetchval("SELECT count(*) FROM chunk_frames")
        assert stored == seconds, f"{stored} chunk rows stored of {seconds}"
    finally:
        await conn.close()
    return took, np.concatenate(rms)


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


async def whole_day(
    pool: asyncpg.Pool, width: int, agg: str, seconds: int, limit: int | None = None
) -> downsample.BucketPage:
    return await downsample.buckets(
        pool,
        SENSOR,
        start=from_micros(T0_US),
        end=from_micros(T0_US + seconds * SECOND),
        fields=SCALARS,
        resolution_us=width,
        agg=agg,
        limit=limit or seconds * SECOND // width + 1,
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
    """The answers against numpy over the generated frames."""
    seconds = len(rms)
    ts = T0_US + phase_us + np.arange(seconds)[:, None] * SECOND + np.arange(FRAMES) * STEP_US
    inside = ts < T0_US + seconds * SECOND
    second = pages["1s"]
    assert len(second) == seconds, len(second)
    assert int(second.count.sum()) == int(inside.sum())
    hour = pages["1h"]
    starts = (ts[inside] - T0_US) // (3600 * SECOND)
    sums = np.bincount(starts, weights=rms[inside].astype(np.float64))
    counts = np.bincount(starts)
    want = (sums / counts).astype(np.float32)
    np.testing.assert_allclose(hour.columns["rms"], want, rtol=3e-7)
    np.testing.assert_array_equal(hour.count, counts)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    check_layout(args.phase_us)
    name = f"bench_downsample_{uuid.uuid4().hex[:8]}"
    database = PG.rsplit("/", 1)[0] + "/" + name
    await migrate(database)
    try:
        print(f"filling {args.seconds:,} chunks of 1 s ({args.seconds * FRAMES:,} frames)")
        took, rms = await fill(database, args.seconds, args.phase_us)
        print(", ".join(f"{k} {v:.1f}" for k, v in took.items()), flush=True)
        results: dict[str, Any] = {"fill": {k: round(v, 2) for k, v in took.items()}}
        calls: dict[str, Any] = {}
        pages: dict[str, downsample.BucketPage] = {}
        async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
            for label, width in RESOLUTIONS.items():
                aggs = ("mean", "min") if label == "1s" else ("mean",)
                for agg in aggs:
                    times, page = await timed(
                        lambda w=width, a=agg: whole_day(pool, w, a, args.seconds), args.runs
                    )
                    if agg == "mean":
                        pages[label] = page
                    calls[f"{label} {agg}"] = {"buckets": len(page), **summary(times)}
                    show(f"whole day, {label}, {agg}", len(page), times)
            check(pages, rms, args.phase_us)
            times, (total, n) = await timed(lambda: paged(pool, args.seconds, args.page), args.runs)
            calls[f"1s mean in pages of {args.page}"] = {
                "buckets": total,
                "calls": n,
                **summary(times),
            }
            show(f"whole day, 1s, mean, {n} pages of {args.page}", total, times)
            times, ts = await timed(lambda: baseline(pool, args.seconds), args.baseline_runs)
            assert np.array_equal(pgcopy.decode_timestamps([ts])[0], pages["1s"].ts)
            calls["1s mean over sensor_frames()"] = {"buckets": len(pages["1s"]), **summary(times)}
            show("whole day, 1s, mean, over sensor_frames()", len(pages["1s"]), times)
            decode = await decoding(pool, pages["1s"], args.runs)
            for way in ("arrays", "rows"):
                median = [decode[way]["median_s"]]
                show(f"fetch the 1s buckets, aggregated, as {way}", decode["buckets"], median)
        results["calls"] = calls
        results["fetch_aggregated"] = decode
        return results
    finally:
        if not args.keep:
            admin = await asyncpg.connect(PG)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


def show(label: str, buckets: int, times: list[float]) -> None:
    median = statistics.median(times)
    print(f"{label:<48} {buckets:>7,} buckets  median {median * 1000:8.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=86_400, help="1 s chunks to load")
    parser.add_argument(
        "--phase-us", type=int, default=371_234, help="chunk starts after each whole second"
    )
    parser.add_argument("--runs", type=int, default=5, help="measured calls of each kind")
    parser.add_argument(
        "--baseline-runs", type=int, default=1, help="measured calls over sensor_frames()"
    )
    parser.add_argument("--page", type=int, default=5000, help="buckets a page, paged read")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()
    if not 0 <= args.phase_us < SECOND or args.seconds < 3600:
        parser.error("--phase-us must be in [0, 1000000) and --seconds at least 3600")
    try:
        result = anyio.run(bench, args)
    except KeyboardInterrupt:
        sys.exit("interrupted (database dropped)")
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "frames": args.seconds * FRAMES,
        **result,
    }
    out = write_result("downsample", document)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
