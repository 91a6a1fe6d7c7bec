"""Downsampled reads against a real database: every bucket checked against numpy over
the same frames, written through the real write path, and against PostgreSQL's own
aggregates over the ``frames`` view, with chunk rows that carry their partial
aggregates, rows that do not (as a replica before migration 0006 wrote them), and
both in one range; migration 0006 over stored rows; and the resolution parser."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

import asyncpg
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import START_NS, tone
from testenv import PG_ADMIN_URL, database_url, unique

from soundstream.core.features import Extractor
from soundstream.core.fields import SCALARS, FeatureParams, Features
from soundstream.core.records import Delivery, Extracted, Job, frame_times_us
from soundstream.core.timefmt import from_micros, to_micros
from soundstream.core.wire import Chunk
from soundstream.errors import BadRequest
from soundstream.store import downsample, pgcopy, upkeep
from soundstream.store.downsample import AGGREGATES, COUNT, BucketPage, buckets, parse_resolution
from soundstream.store.migrate import available, migrate
from soundstream.store.pgcopy import chunk_row
from soundstream.store.read import FeaturePage
from soundstream.store.write import write_batch

PARAMS = FeatureParams()
EXTRACT = Extractor(PARAMS)
RATE = 16000
HOP_US = PARAMS.hop * 1_000_000 // RATE  # 32 ms: frames of chunks started whole hops apart coincide
START_US = START_NS // 1000  # 2026-01-01T00:00:00Z
SECOND = 1_000_000
# float32 rounding of a mean that PostgreSQL sums in another order than numpy
MEAN_RTOL = 2 * float(np.finfo(np.float32).eps)
HOUR = 3600 * SECOND
PARTIALS_MIGRATION = 6
PARTIAL_COLUMNS = tuple(
    pgcopy.partial_column(name, kind) for name in SCALARS for kind in pgcopy.PARTIALS
)


@dataclass(frozen=True)
class Written:
    """A chunk as written, and what its frames hold."""

    extracted: Extracted
    ts: np.ndarray
    features: Features


def chunk(
    sensor: str,
    seq: int,
    start_us: int,
    seconds: float,
    *,
    received_us: int | None = None,
    seed: int | None = None,
    edit: Callable[[Features], Features] | None = None,
) -> Written:
    """A chunk of its own signal, its features changed by ``edit`` before encoding."""
    freqs = (440.0 + 37 * seq, 1250.0 + 113 * seq)  # each chunk its own signal
    samples = tone(seconds, RATE, freqs=freqs, seed=seq if seed is None else seed)
    received = START_US + seq if received_us is None else received_us
    delivery = Delivery(1, Chunk(sensor, seq, start_us * 1000, RATE, samples), received)
    features = EXTRACT(samples, RATE)
    if edit is not None:
        features = edit(features)
    row = chunk_row(Job.of(delivery), PARAMS.hop, features)
    ts = frame_times_us(start_us * 1000, len(features), PARAMS.hop, RATE)
    return Written(Extracted.of(delivery, row), ts, features)


def reference(
    written: Sequence[Written],
    *,
    start_us: int,
    end_us: int,
    width: int,
    agg: str,
    fields: Sequence[str] = SCALARS,
) -> dict[str, np.ndarray]:
    """The buckets computed with numpy from the chunks' own frames: at an instant
    held by several chunks, the frame of the one received first (then lowest seq)."""
    ts = np.concatenate([w.ts for w in written])
    received = np.concatenate([np.full(len(w.ts), w.extracted.received_us) for w in written])
    seq = np.concatenate([np.full(len(w.ts), w.extracted.seq) for w in written])
    order = np.lexsort((seq, received, ts))
    ts = ts[order]
    first = np.ones(len(ts), bool)
    first[1:] = ts[1:] != ts[:-1]
    keep = first & (ts >= start_us) & (ts < end_us)
    ts = ts[keep]
    starts = ts // width * width
    bucket_ts, at, counts = np.unique(starts, return_index=True, return_counts=True)
    out = {"ts": bucket_ts, COUNT: counts}
    for name in fields:
        values = np.concatenate([getattr(w.features, name) for w in written])[order][keep]
        if agg == "mean":
            out[name] = (np.add.reduceat(values.astype(np.float64), at) / counts).astype(np.float32)
        elif agg == "min":
            out[name] = np.minimum.reduceat(values, at)
        else:
            out[name] = np.maximum.reduceat(values, at)
    return out


def assert_matches(page: BucketPage, want: dict[str, np.ndarray], agg: str) -> None:
    np.testing.assert_array_equal(page.ts, want["ts"])
    np.testing.assert_array_equal(page.count, want[COUNT])
    assert page.ts.dtype == np.int64 and page.count.dtype == np.int64
    for name in want.keys() - {"ts", COUNT}:
        got = page.columns[name]
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        if agg == "mean":
            np.testing.assert_allclose(got, want[name], rtol=MEAN_RTOL, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want[name], err_msg=name)


async def store(conn: asyncpg.Connection, written: Sequence[Written]) -> None:
    await write_batch(conn, [w.extracted for w in written])


async def forget_partials(
    conn: asyncpg.Connection, sensor: str, seqs: Sequence[int], fields: Sequence[str] = SCALARS
) -> None:
    """Those chunk rows without the partials of ``fields``: NULL, as in the rows of a
    replica older than migration 0006."""
    columns = [pgcopy.partial_column(name, kind) for name in fields for kind in pgcopy.PARTIALS]
    await conn.execute(
        f"UPDATE chunk_frames SET {', '.join(f'{column} = NULL' for column in columns)} "
        "WHERE sensor_id = $1 AND seq = ANY($2::bigint[])",
        sensor,
        list(seqs),
    )


def stored_seqs(written: Sequence[Written], stored: str) -> list[int]:
    """The seqs whose rows lose their partials: none, all, or every other one."""
    seqs = [w.extracted.seq for w in written]
    return {"all": [], "none": seqs, "some": seqs[1::2]}[stored]


# The same aggregate over frames, as SQL: the ``frames`` view's own rows.
_OVER_FRAMES = {"mean": "(sum({}::float8) / count(*))::real", "min": "min({})", "max": "max({})"}


async def from_frames(
    api: asyncpg.Pool,
    sensor: str,
    *,
    start_us: int,
    end_us: int,
    width: int,
    agg: str,
    fields: Sequence[str] = SCALARS,
) -> dict[str, np.ndarray]:
    """The buckets as PostgreSQL aggregates the rows of the ``frames`` view (its NaN
    ordering and arithmetic included)."""
    columns = "".join(f", {_OVER_FRAMES[agg].format(name)} AS {name}" for name in fields)
    rows = await api.fetch(
        f"""SELECT date_bin($4::interval, ts, '1970-01-01T00:00:00Z') AS bucket,
                   count(*) AS frames{columns}
            FROM frames
            WHERE sensor_id = $1 AND ts >= $2 AND ts < $3
            GROUP BY 1
            ORDER BY 1""",
        sensor,
        from_micros(start_us),
        from_micros(end_us),
        timedelta(microseconds=width),
    )
    out = {
        "ts": np.array([to_micros(row["bucket"]) for row in rows], np.int64),
        COUNT: np.array([row["frames"] for row in rows], np.int64),
    }
    for name in fields:
        out[name] = np.array([row[name] for row in rows], np.float32)
    return out


async def read_all(
    api: asyncpg.Pool,
    sensor: str,
    *,
    start_us: int,
    end_us: int,
    width: int,
    agg: str = "mean",
    fields: Sequence[str] = SCALARS,
    limit: int = 100_000,
) -> BucketPage:
    return await buckets(
        api,
        sensor,
        start=from_micros(start_us),
        end=from_micros(end_us),
        fields=fields,
        resolution_us=width,
        agg=agg,
        limit=limit,
    )


async def read_checked(
    api: asyncpg.Pool,
    sensor: str,
    written: Sequence[Written],
    *,
    start_us: int,
    end_us: int,
    width: int,
    agg: str,
    fields: Sequence[str] = SCALARS,
) -> BucketPage:
    """The buckets read for ``sensor``, checked against ``reference`` over ``written``."""
    page = await read_all(
        api, sensor, start_us=start_us, end_us=end_us, width=width, agg=agg, fields=fields
    )
    want = reference(written, start_us=start_us, end_us=end_us, width=width, agg=agg, fields=fields)
    assert_matches(page, want, agg)
    return page


def mixed(sensor: str) -> list[Written]:
    """Chunks of several lengths at instants on no whole second, with gaps longer
    than a bucket, a long chunk spanning many buckets, and a chunk received before
    an earlier one it overlaps, holding some of the same instants (started whole
    hops later) with other values."""
    at = START_US + 312_345
    return [
        chunk(sensor, 0, at, 1.0),
        chunk(sensor, 1, at + 1_000_000, 0.5),
        chunk(sensor, 2, at + 4_250_000, 2.5),  # almost 3 s after the last frame before
        chunk(sensor, 3, at + 7_100_000, 0.3),
        chunk(sensor, 4, at + 9_000_000, 6.0),
        # Overlaps seq 4 from its 10th frame on, and was received before it: its
        # values (another signal) replace seq 4's at the instants both hold.
        chunk(sensor, 5, at + 9_000_000 + 10 * HOP_US, 1.5, received_us=START_US - 10, seed=99),
        # Overlaps seq 4 off its frame grid: no instant in common, every frame counts.
        chunk(sensor, 6, at + 12_000_000 + 7_000, 1.0),
        chunk(sensor, 7, at + 30_000_000, 1.0),  # after a long gap
    ]


@pytest.mark.parametrize("stored", ["all", "none", "some"])
@pytest.mark.parametrize("agg", AGGREGATES)
async def test_every_bucket_matches_numpy_over_the_same_frames(
    conn: asyncpg.Connection, api: asyncpg.Pool, agg: str, stored: str
) -> None:
    """Whether the rows carry their partials (``stored``: all, none, every other one)
    changes nothing in the answers."""
    written = mixed("mix")
    await store(conn, written)
    await forget_partials(conn, "mix", stored_seqs(written, stored))
    # From mid-bucket (the first bucket starts before start and holds only the
    # frames from start on) to mid-chunk.
    start_us, end_us = START_US + 1_234_567, START_US + 31_000_000
    for width in (100_000, 250_000, SECOND, 3 * SECOND, 60 * SECOND, HOUR):
        page = await read_checked(
            api, "mix", written, start_us=start_us, end_us=end_us, width=width, agg=agg
        )
        over = await from_frames(api, "mix", start_us=start_us, end_us=end_us, width=width, agg=agg)
        assert_matches(page, over, agg)
        assert not page.more
        # Buckets start on whole multiples of the resolution since the epoch.
        assert (page.ts % width == 0).all()
        assert page.ts[0] < start_us <= page.ts[0] + width


async def test_a_row_without_the_partials_of_one_field_is_read_from_its_arrays(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    """Partials are taken field by field: a row lacking those of ``rms`` (a field
    added after it was written, say) still gives its stored ``zcr``."""
    written = [chunk("part", k, START_US + k * SECOND + 100_000, 0.5) for k in range(4)]
    await store(conn, written)
    await forget_partials(conn, "part", [1, 2], fields=["rms"])
    start_us, end_us = START_US, START_US + 4 * SECOND
    for fields in (["rms", "zcr"], ["zcr"], ["rms"], []):
        for agg in AGGREGATES:
            await read_checked(
                api, "part", written,
                start_us=start_us, end_us=end_us, width=SECOND, agg=agg, fields=fields,
            )  # fmt: skip


async def test_a_chunk_inside_one_bucket_gives_its_stored_partials(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    """What a chunk whose frames lie in one bucket contributes is what its row stores
    (the partials stand in for its frames); a chunk across buckets is read from its
    arrays whatever its partials say."""
    inside = chunk("taken", 0, START_US + 100_000, 0.5)
    across = chunk("taken", 1, START_US + SECOND + 800_000, 0.5)  # frames in seconds 1 and 2
    await store(conn, [inside, across])
    await conn.execute(
        "UPDATE chunk_frames SET rms_sum = rms_sum + 1000, rms_min = -1, rms_max = 1000 "
        "WHERE sensor_id = 'taken'"
    )
    kwargs = dict(start_us=START_US, end_us=START_US + 3 * SECOND, width=SECOND, fields=["rms"])
    honest = {agg: reference([inside, across], **kwargs, agg=agg) for agg in AGGREGATES}
    mean = await read_all(api, "taken", **kwargs, agg="mean")
    total = float(np.add.accumulate(inside.features.rms, dtype=np.float64)[-1])  # as stored
    assert mean.columns["rms"][0] == np.float32((total + 1000) / len(inside.ts))
    np.testing.assert_array_equal(mean.columns["rms"][1:], honest["mean"]["rms"][1:])
    low = await read_all(api, "taken", **kwargs, agg="min")
    high = await read_all(api, "taken", **kwargs, agg="max")
    assert (low.columns["rms"][0], high.columns["rms"][0]) == (-1, 1000)
    np.testing.assert_array_equal(low.columns["rms"][1:], honest["min"]["rms"][1:])
    np.testing.assert_array_equal(high.columns["rms"][1:], honest["max"]["rms"][1:])


@pytest.mark.parametrize("stored", ["all", "some"])
async def test_coarse_buckets_across_midnight_and_day_partitions(
    conn: asyncpg.Connection, api: asyncpg.Pool, stored: str
) -> None:
    """Buckets of an hour, 90 minutes, 5 hours (one from 23:00 to 04:00: its chunks
    lie in two day partitions) and a day, over a range read a day at most a
    statement."""
    day = date(2026, 1, 1)
    await upkeep.ensure_partitions(conn, [day - timedelta(days=1), day, day + timedelta(days=1)])
    written = [
        chunk("night", 0, START_US - 5 * HOUR + 250_000, 1.0),
        chunk("night", 1, START_US - 2 * HOUR + 10_000, 2.0),
        chunk("night", 2, START_US - 1 * HOUR - 500_000, 1.0),  # across 23:00
        chunk("night", 3, START_US - 400_000, 1.0),  # across midnight
        chunk("night", 4, START_US + 30 * 60 * SECOND, 1.5),
        chunk("night", 5, START_US + HOUR - 300_000, 1.0),  # across 01:00
        chunk("night", 6, START_US + 3 * HOUR + 999_000, 1.0),
        chunk("night", 7, START_US + 26 * HOUR, 0.5),  # the day after
        chunk("night", 8, START_US - 30 * 60 * SECOND, 0.5),  # 23:30
    ]
    await store(conn, written)
    await forget_partials(conn, "night", stored_seqs(written, stored))
    start_us, end_us = START_US - 18 * HOUR, START_US + 30 * HOUR
    for width in (HOUR, 90 * 60 * SECOND, 5 * HOUR, downsample.MAX_RESOLUTION_US):
        for agg in AGGREGATES:
            await read_checked(
                api, "night", written, start_us=start_us, end_us=end_us, width=width, agg=agg
            )
    # Midnight inside a bucket of 5 hours (2026 starts 490,896 hours after the epoch,
    # 23:00 is a whole number of 5 hours), holding whole chunks of both days.
    page = await read_all(api, "night", start_us=start_us, end_us=end_us, width=5 * HOUR)
    assert START_US - HOUR in page.ts.tolist()


def spoiled(rms: dict[int, float] | None = None, **whole: float) -> Callable[[Features], Features]:
    """An ``edit`` for ``chunk``: ``rms`` at some frames, and every frame of the fields
    named, set to the values given."""

    def edit(features: Features) -> Features:
        values = {name: getattr(features, name).copy() for name in SCALARS}
        for frame, value in (rms or {}).items():
            values["rms"][frame] = value
        for name, value in whole.items():
            values[name][:] = value
        return replace(features, **values)

    return edit


@pytest.mark.parametrize("stored", ["all", "none", "some"])
async def test_nan_and_infinities_aggregate_as_postgresql_orders_them(
    conn: asyncpg.Connection, api: asyncpg.Pool, stored: str
) -> None:
    """PostgreSQL orders NaN above every number: a bucket's max is NaN when any of its
    frames is, its min only when all are; a sum meeting NaN, or both infinities, is
    NaN. Stored partials give what the arrays give."""
    nan, inf = math.nan, math.inf
    written = [
        chunk("odd", 0, START_US + 100_000, 0.5, edit=spoiled({3: nan, 5: -inf})),
        chunk("odd", 1, START_US + SECOND + 100_000, 0.5, edit=spoiled(zcr=nan)),
        chunk("odd", 2, START_US + 2 * SECOND + 100_000, 0.5, edit=spoiled({0: inf, 1: -inf})),
        chunk("odd", 3, START_US + 3 * SECOND + 100_000, 0.5, edit=spoiled({2: inf})),
        chunk("odd", 4, START_US + 3 * SECOND + 700_000, 0.5),  # across seconds 3 and 4
        chunk("odd", 5, START_US + 4 * SECOND + 600_000, 0.3, edit=spoiled(flatness=inf)),
    ]
    await store(conn, written)
    await forget_partials(conn, "odd", stored_seqs(written, stored))
    start_us, end_us = START_US, START_US + 5 * SECOND
    for width in (100_000, SECOND, 2 * SECOND, HOUR):
        for agg in AGGREGATES:
            page = await read_all(
                api, "odd", start_us=start_us, end_us=end_us, width=width, agg=agg
            )
            want = await from_frames(
                api, "odd", start_us=start_us, end_us=end_us, width=width, agg=agg
            )
            assert_matches(page, want, agg)
    by_second = {
        agg: await read_all(api, "odd", start_us=start_us, end_us=end_us, width=SECOND, agg=agg)
        for agg in AGGREGATES
    }
    rms, zcr = (
        {agg: page.columns[name] for agg, page in by_second.items()} for name in ("rms", "zcr")
    )
    assert np.isnan(rms["max"][0]) and rms["min"][0] == -inf and np.isnan(rms["mean"][0])
    assert np.isnan(zcr["min"][1]) and np.isnan(zcr["max"][1])  # every frame NaN
    assert np.isnan(rms["mean"][2]) and (rms["min"][2], rms["max"][2]) == (-inf, inf)
    assert rms["max"][3] == inf and rms["mean"][3] == inf


async def test_migration_0006_computes_the_partials_of_stored_rows() -> None:
    """Rows stored before migration 0006 get the partials the worker would have
    written, bit for bit (NaN and infinities included), and are read from them."""
    name = unique("soundstream_partials")
    url = database_url(name)
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        written = [
            *mixed("old"),
            chunk("old", 10, START_US + 40 * SECOND, 0.5, edit=spoiled({1: math.nan})),
            chunk("old", 11, START_US + 41 * SECOND, 0.5, edit=spoiled({0: -math.inf}, zcr=0.0)),
            chunk("old", 12, START_US + 42 * SECOND, 0.5, edit=spoiled(centroid=math.nan)),
        ]
        await migrate(url, until=PARTIALS_MIGRATION - 1)
        conn = await asyncpg.connect(url)
        try:
            await copy_as_before_partials(conn, written)
            assert await migrate(url) == [
                m.version for m in available() if m.version >= PARTIALS_MIGRATION
            ]
            rows = await conn.fetch(
                f"SELECT seq, {', '.join(PARTIAL_COLUMNS)} FROM chunk_frames ORDER BY seq"
            )
            assert [row["seq"] for row in rows] == [w.extracted.seq for w in written]
            for row, w in zip(rows, written, strict=True):
                scalars = np.stack([getattr(w.features, name) for name in SCALARS])
                fields = struct.unpack(">" + "idifif" * len(SCALARS), pgcopy.partials(scalars))
                want = dict(zip(PARTIAL_COLUMNS, fields[1::2], strict=True))
                for column in PARTIAL_COLUMNS:
                    got = row[column]
                    assert got == want[column] or (math.isnan(got) and math.isnan(want[column]))
            # The primary key holds them: read with the key, without the row.
            key = await conn.fetchval("SELECT pg_get_indexdef('chunk_frames_pkey'::regclass)")
            assert "INCLUDE" in key and all(column in key for column in PARTIAL_COLUMNS)
        finally:
            await conn.close()
        async with asyncpg.create_pool(url, min_size=1, max_size=2) as api:
            start_us, end_us = START_US, START_US + 43 * SECOND
            for width in (SECOND, 60 * SECOND):
                for agg in AGGREGATES:
                    page = await read_all(
                        api, "old", start_us=start_us, end_us=end_us, width=width, agg=agg
                    )
                    want = await from_frames(
                        api, "old", start_us=start_us, end_us=end_us, width=width, agg=agg
                    )
                    assert_matches(page, want, agg)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def copy_as_before_partials(conn: asyncpg.Connection, written: Sequence[Written]) -> None:
    """The chunks' rows as a replica before migration 0006 copied them: the columns
    less the partials."""
    columns = [column for column in pgcopy.COLUMNS if column not in PARTIAL_COLUMNS]
    tail = len(pgcopy.partials(np.zeros((len(SCALARS), 1), np.float32)))
    rows = [w.extracted.frames.row for w in written]
    data = [struct.pack(">h", len(columns)) + row[2 : len(row) - tail] for row in rows]

    async def source() -> AsyncIterator[bytes]:
        yield b"".join(pgcopy.stream(data))

    await conn.copy_to_table("chunk_frames", source=source(), columns=columns, format="binary")
    longest = max(int(w.ts[-1] - w.ts[0]) for w in written)
    await conn.execute("UPDATE frame_span SET longest = $1", timedelta(microseconds=longest))


async def test_buckets_without_frames_are_absent(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    written = [chunk("gaps", 0, START_US, 1.0), chunk("gaps", 1, START_US + 5 * SECOND, 1.0)]
    await store(conn, written)
    page = await read_all(
        api, "gaps", start_us=START_US, end_us=START_US + 10 * SECOND, width=SECOND
    )
    np.testing.assert_array_equal(page.ts, [START_US, START_US + 5 * SECOND])
    np.testing.assert_array_equal(page.count, [len(w.ts) for w in written])
    empty = await read_all(
        api, "gaps", start_us=START_US + 2 * SECOND, end_us=START_US + 4 * SECOND, width=SECOND
    )
    assert len(empty) == 0 and not empty.more
    assert set(empty.columns) == {*SCALARS, COUNT}
    assert all(len(column) == 0 for column in empty.columns.values())


async def test_an_instant_held_twice_counts_once_with_the_first_received_values(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    # Two chunks of the same instants (same start and length), other signals: seq 1
    # arrived first, in a later batch.
    late = chunk("twice", 0, START_US, 1.0, received_us=START_US + 500, seed=1)
    early = chunk("twice", 1, START_US, 1.0, received_us=START_US + 100, seed=2)
    assert (late.ts == early.ts).all()
    await store(conn, [late])
    await store(conn, [early])
    page = await read_all(
        api, "twice", start_us=START_US, end_us=START_US + SECOND, width=SECOND, agg="max"
    )
    np.testing.assert_array_equal(page.count, [len(early.ts)])
    for name in SCALARS:
        assert page.columns[name][0] == getattr(early.features, name).max()
    assert any(page.columns[name][0] != getattr(late.features, name).max() for name in SCALARS)
    # The frames view agrees on which frames count.
    assert await conn.fetchval("SELECT count(*) FROM frames WHERE sensor_id = 'twice'") == len(
        early.ts
    )


async def test_pages_after_the_last_bucket_give_the_rows_of_one_call(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    written = mixed("pages")
    # Sparse data much later: windows that come back short jump to the next chunk.
    written += [chunk("pages", 10 + i, START_US + (3600 + 900 * i) * SECOND, 0.5) for i in range(4)]
    await store(conn, written)
    start_us, end_us = START_US + 700_000, START_US + 7200 * SECOND
    for width, limit in [(100_000, 1), (100_000, 7), (SECOND, 3), (SECOND, 50), (60 * SECOND, 2)]:
        whole = await read_all(api, "pages", start_us=start_us, end_us=end_us, width=width)
        seen: list[BucketPage] = []
        after: datetime | None = None
        while True:
            page = await buckets(
                api,
                "pages",
                start=from_micros(start_us),
                end=from_micros(end_us),
                fields=["rms", "centroid"],
                resolution_us=width,
                agg="mean",
                limit=limit,
                after_ts=after,
            )
            assert len(page) <= limit
            seen.append(page)
            if not page.more:
                break
            assert len(page) == limit
            after = from_micros(int(page.ts[-1]))
        np.testing.assert_array_equal(np.concatenate([p.ts for p in seen]), whole.ts)
        np.testing.assert_array_equal(np.concatenate([p.count for p in seen]), whole.count)
        for name in ("rms", "centroid"):
            np.testing.assert_array_equal(
                np.concatenate([p.columns[name] for p in seen]), whole.columns[name]
            )
        assert not whole.more and len(seen) == -(-len(whole) // limit)


async def test_one_microsecond_before_a_bucket_resumes_at_that_bucket(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    """``after_ts`` need not be a bucket start: buckets that start after it follow
    (what a merge of several sensors asks for when it resumes at an instant)."""
    await store(conn, [chunk("resume", 0, START_US, 3.0)])
    kwargs = dict(start=from_micros(START_US), end=from_micros(START_US + 4 * SECOND))
    for after, first in [
        (START_US + SECOND - 1, START_US + SECOND),
        (START_US + 1, START_US + SECOND),
    ]:
        page = await buckets(
            api,
            "resume",
            **kwargs,
            fields=[],
            resolution_us=SECOND,
            agg="mean",
            limit=10,
            after_ts=from_micros(after),
        )
        assert page.ts[0] == first


async def test_the_range_includes_start_and_excludes_end(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    written = [chunk("bounds", 0, START_US + 5_000, 2.0)]
    await store(conn, written)
    ts = written[0].ts
    start_us, end_us = int(ts[3]), int(ts[40])  # both frame instants
    for width in (100_000, SECOND):
        page = await read_checked(
            api, "bounds", written, start_us=start_us, end_us=end_us, width=width, agg="min"
        )
        assert int(page.count.sum()) == 37  # frames 3..39
    # A range of one microsecond holds the frame at its start, and only it.
    one = await read_all(api, "bounds", start_us=int(ts[7]), end_us=int(ts[7]) + 1, width=SECOND)
    np.testing.assert_array_equal(one.count, [1])
    assert one.columns["rms"][0] == written[0].features.rms[7]


async def test_one_day_buckets_start_at_utc_midnight_across_partitions(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    day = date(2026, 1, 1)
    await upkeep.ensure_partitions(conn, [day - timedelta(days=1), day])  # the next day: default
    written = [
        chunk("days", 0, START_US - 3 * SECOND, 1.0),
        chunk("days", 1, START_US - SECOND // 2, 1.0),  # across midnight
        chunk("days", 2, START_US + 7 * 3600 * SECOND, 2.0),
        chunk("days", 3, START_US + 86_400 * SECOND + 12 * SECOND, 0.5),
    ]
    await store(conn, written)
    start_us, end_us = START_US - 86_400 * SECOND + 1, START_US + 3 * 86_400 * SECOND
    width = downsample.MAX_RESOLUTION_US
    for agg in AGGREGATES:
        page = await read_checked(
            api, "days", written, start_us=start_us, end_us=end_us, width=width, agg=agg
        )
    np.testing.assert_array_equal(
        page.ts, [START_US - 86_400 * SECOND, START_US, START_US + 86_400 * SECOND]
    )
    # One bucket a page, each read a day at a time.
    firsts = []
    after: datetime | None = None
    for _ in range(3):
        one = await buckets(
            api,
            "days",
            start=from_micros(start_us),
            end=from_micros(end_us),
            fields=["zcr"],
            resolution_us=width,
            agg="mean",
            limit=1,
            after_ts=after,
        )
        firsts.append(int(one.ts[0]))
        after = from_micros(int(one.ts[0]))
    assert firsts == page.ts.tolist() and not one.more


async def test_the_finest_resolution_and_count_alone(
    conn: asyncpg.Connection, api: asyncpg.Pool
) -> None:
    written = [
        chunk("fine", 0, START_US + 40_000, 1.5),
        chunk("fine", 1, START_US + 1_530_000, 1.0),
    ]
    await store(conn, written)
    width = downsample.MIN_RESOLUTION_US
    start_us, end_us = START_US, START_US + 3 * SECOND
    page = await read_all(api, "fine", start_us=start_us, end_us=end_us, width=width, fields=[])
    assert set(page.columns) == {COUNT}
    want = reference(written, start_us=start_us, end_us=end_us, width=width, agg="mean", fields=[])
    np.testing.assert_array_equal(page.ts, want["ts"])
    np.testing.assert_array_equal(page.count, want[COUNT])
    assert page.count.max() == 4  # frames 32 ms apart in 100 ms buckets
    fields = ["flatness", "bandwidth"]
    for agg in AGGREGATES:
        page = await read_checked(
            api, "fine", written,
            start_us=start_us, end_us=end_us, width=width, agg=agg, fields=fields,
        )  # fmt: skip
        assert list(page.columns) == [*fields, COUNT]


async def test_a_bucket_page_is_a_feature_page(conn: asyncpg.Connection, api: asyncpg.Pool) -> None:
    await store(conn, [chunk("shape", 0, START_US, 2.0)])
    page = await read_all(
        api, "shape", start_us=START_US, end_us=START_US + 2 * SECOND, width=SECOND, limit=1
    )
    assert isinstance(page, FeaturePage)
    assert len(page) == 1 and page.more
    assert page.count is page.columns[COUNT]
    with pytest.raises(AttributeError):
        page.more = False  # type: ignore[misc]


async def test_only_scalars_and_known_aggregates_reach_sql(api: asyncpg.Pool) -> None:
    common = dict(start=from_micros(START_US), end=from_micros(START_US + SECOND), limit=10)
    with pytest.raises(ValueError, match="scalar"):
        await buckets(api, "x", **common, fields=["mel"], resolution_us=SECOND, agg="mean")
    with pytest.raises(ValueError, match="scalar"):
        await buckets(
            api, "x", **common, fields=["rms; DROP TABLE chunks"], resolution_us=SECOND, agg="mean"
        )
    with pytest.raises(ValueError, match="agg"):
        await buckets(api, "x", **common, fields=["rms"], resolution_us=SECOND, agg="median")
    with pytest.raises(ValueError, match="resolution"):
        await buckets(api, "x", **common, fields=["rms"], resolution_us=99_999, agg="mean")


# -- the resolution parameter ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("100ms", 100_000),
        ("0100ms", 100_000),
        ("250ms", 250_000),
        ("1s", 1_000_000),
        ("90s", 90_000_000),
        ("1m", 60_000_000),
        ("15m", 900_000_000),
        ("1h", 3_600_000_000),
        ("24h", 86_400_000_000),
        ("1440m", 86_400_000_000),
        ("86400s", 86_400_000_000),
        ("86400000ms", 86_400_000_000),
        ("1d", 86_400_000_000),
        pytest.param("0" * 5000 + "1d", 86_400_000_000, id="zeros then 1d"),
    ],
)
def test_resolutions_from_100ms_to_a_day_are_read(text: str, micros: int) -> None:
    assert parse_resolution(text) == micros


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "s",
        "ms",
        "0s",
        "0d",
        "99ms",
        "86400001ms",
        "86401s",
        "1441m",
        "25h",
        "2d",
        "1.5s",
        "1e3ms",
        "-1s",
        "+1s",
        " 1s",
        "1s ",
        "1 s",
        "1S",
        "1sec",
        "1h30m",
        "1_000ms",
        "0x10s",
        "\u0661s",  # an Arabic-Indic digit one
        "\uff11s",  # a fullwidth digit one
        pytest.param("9" * 5000 + "s", id="5000 digits"),  # past the digits int() converts
        pytest.param("0" * 5000 + "99ms", id="zeros then 99ms"),
    ],
)
def test_anything_else_is_a_bad_resolution(text: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_resolution(text)
    assert caught.value.parameter == "resolution"
    assert caught.value.status == 400


@given(st.text(max_size=40) | st.from_regex(r"\A[0-9]{1,20}(ms|s|m|h|d)\Z"))
def test_any_text_is_a_resolution_in_range_or_a_bad_request(text: str) -> None:
    try:
        micros = parse_resolution(text)
    except BadRequest as exc:
        assert exc.parameter == "resolution"
    else:
        assert downsample.MIN_RESOLUTION_US <= micros <= downsample.MAX_RESOLUTION_US


@given(st.integers(min_value=0, max_value=10**15), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_a_number_and_a_unit_is_that_many_units(n: int, unit: str) -> None:
    micros = (
        n * {"ms": 1_000, "s": 10**6, "m": 60 * 10**6, "h": 3600 * 10**6, "d": 86_400 * 10**6}[unit]
    )
    if 100_000 <= micros <= 86_400 * 10**6:
        assert parse_resolution(f"{n}{unit}") == micros
    else:
        with pytest.raises(BadRequest):
            parse_resolution(f"{n}{unit}")
