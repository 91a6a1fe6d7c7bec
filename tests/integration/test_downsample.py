"""Downsampled reads against a real database: every bucket checked against numpy over
the same frames, written through the real write path; and the resolution parser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import START_NS, tone

from soundstream.core.features import Extractor
from soundstream.core.fields import SCALARS, FeatureParams, Features
from soundstream.core.records import Delivery, Extracted, Job, frame_times_us
from soundstream.core.timefmt import from_micros
from soundstream.core.wire import Chunk
from soundstream.errors import BadRequest
from soundstream.store import downsample, upkeep
from soundstream.store.downsample import AGGREGATES, COUNT, BucketPage, buckets, parse_resolution
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
) -> Written:
    freqs = (440.0 + 37 * seq, 1250.0 + 113 * seq)  # each chunk its own signal
    samples = tone(seconds, RATE, freqs=freqs, seed=seq if seed is None else seed)
    received = START_US + seq if received_us is None else received_us
    delivery = Delivery(1, Chunk(sensor, seq, start_us * 1000, RATE, samples), received)
    features = EXTRACT(samples, RATE)
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


@pytest.mark.parametrize("agg", AGGREGATES)
async def test_every_bucket_matches_numpy_over_the_same_frames(
    conn: asyncpg.Connection, api: asyncpg.Pool, agg: str
) -> None:
    written = mixed("mix")
    await store(conn, written)
    # From mid-bucket (the first bucket starts before start and holds only the
    # frames from start on) to mid-chunk.
    start_us, end_us = START_US + 1_234_567, START_US + 31_000_000
    for width in (100_000, 250_000, SECOND, 3 * SECOND, 60 * SECOND):
        page = await read_all(api, "mix", start_us=start_us, end_us=end_us, width=width, agg=agg)
        want = reference(written, start_us=start_us, end_us=end_us, width=width, agg=agg)
        assert_matches(page, want, agg)
        assert not page.more
        # Buckets start on whole multiples of the resolution since the epoch.
        assert (page.ts % width == 0).all()
        assert page.ts[0] < start_us <= page.ts[0] + width


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
        page = await read_all(
            api, "bounds", start_us=start_us, end_us=end_us, width=width, agg="min"
        )
        want = reference(written, start_us=start_us, end_us=end_us, width=width, agg="min")
        assert_matches(page, want, "min")
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
        page = await read_all(api, "days", start_us=start_us, end_us=end_us, width=width, agg=agg)
        want = reference(written, start_us=start_us, end_us=end_us, width=width, agg=agg)
        assert_matches(page, want, agg)
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
        page = await read_all(
            api, "fine", start_us=start_us, end_us=end_us, width=width, agg=agg, fields=fields
        )
        want = reference(
            written, start_us=start_us, end_us=end_us, width=width, agg=agg, fields=fields
        )
        assert_matches(page, want, agg)
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
