"""Feature reads downsampled to fixed time buckets, aggregated by PostgreSQL.

A bucket of ``resolution`` starts at a whole multiple of it since the UNIX epoch, so
buckets line up across requests, sensors and pages whatever ``start`` is; a bucket
without frames is absent. Only the aggregates leave the database: a day of one
sensor at 1 s is 2.6 million frames in and at most 86,400 rows out, and those come
back as one row of binary arrays (``array_send``) decoded with numpy, not as a
Python object per bucket or value.

Frames are counted as the ``frames`` view and ``sensor_frames()`` define them: where
two chunks of the sensor hold the same instant, the chunk received first gives the
frame. Ordering every frame to find the few instants held twice costs far more
than the aggregation itself (a day at 1 s over ``sensor_frames()``: about 5.7 s,
against 1.3 to 2 s here), so only the chunks whose spans meet another chunk's
(rare: a replayed or re-cut stretch of audio) go through ``DISTINCT ON``.

Every other chunk is reduced on its own. One whose frames all lie in one bucket
adds the partial aggregates stored with its row (``pgcopy.PARTIALS``: per scalar
field the float8 sum and the real min and max over its frames), read with its key
from the primary key's index, so that a coarse resolution reads about 200 bytes a
chunk and unnests nothing: a day at 1 h takes 0.1 s instead of 1.3 s, a month 4 s
instead of 39 (``bench/downsample.py``). A chunk that spans buckets, or was written
without partials (by an older replica, while a new version rolls out), is unnested
to a partial per bucket it reaches. Each bucket is then the sum, minimum or maximum
of its partials.

Every identifier in generated SQL comes from ``SCALARS`` and ``AGGREGATES``;
request text only ever reaches PostgreSQL as a bound parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from soundstream.core.fields import SCALARS
from soundstream.core.timefmt import from_micros, to_micros
from soundstream.errors import BadRequest
from soundstream.store import pgcopy
from soundstream.store.read import Column, Connections, FeaturePage

AGGREGATES = ("mean", "min", "max")
# The key of the frames-per-bucket column in ``BucketPage.columns``.
COUNT = "count"

# One statement aggregates at most this stretch of time: a day of one sensor is a few
# million frames, a second or two of PostgreSQL, well inside the API's statement
# timeout. Longer ranges take a statement per day.
MAX_WINDOW_US = 86_400_000_000

MIN_RESOLUTION_US = 100_000  # 100 ms
MAX_RESOLUTION_US = 86_400_000_000  # 1 d
_UNIT_US = {
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}
# ASCII digits only (``\d`` would admit other scripts' digits), then one unit.
_RESOLUTION = re.compile(r"([0-9]+)(ms|s|m|h|d)")
# More significant digits than this is out of range in any unit; checked before
# int(), which refuses (ValueError) strings of thousands of digits. Leading zeros
# are allowed, as the published pattern ([0-9]+ and a unit) allows them.
_MAX_DIGITS = 12
_INT8 = np.dtype([("len", ">i4"), ("v", ">i8")])  # a bigint[] element in binary format
_FORMS = "<n>ms, <n>s, <n>m, <n>h or <n>d with a whole number n, from 100ms to 1d"


def parse_resolution(text: str) -> int:
    """``100ms`` .. ``1d`` -> microseconds; anything else ``BadRequest("resolution")``."""
    match = _RESOLUTION.fullmatch(text)
    if match is None:
        raise BadRequest("resolution", f"resolution must be {_FORMS}; got {text!r:.40}")
    digits, unit = match.groups()
    significant = digits.lstrip("0")
    micros = int(significant or "0") * _UNIT_US[unit] if len(significant) <= _MAX_DIGITS else -1
    if not MIN_RESOLUTION_US <= micros <= MAX_RESOLUTION_US:
        raise BadRequest(
            "resolution", f"resolution must be from 100ms to 1d inclusive; got {text!r:.40}"
        )
    return micros


class BucketPage(FeaturePage):
    """Buckets in time order, shaped as a ``FeaturePage`` so that whatever prints or
    merges pages takes it as it is: ``ts`` is each bucket's start (microseconds
    since the UNIX epoch); ``columns`` holds one float32 aggregate per field asked
    for and, under ``COUNT``, the int64 number of frames in each bucket (a column
    like the others, so it survives code that rebuilds pages from ``columns``)."""

    __slots__ = ()

    @property
    def count(self) -> np.ndarray:
        column = self.columns[COUNT]
        assert isinstance(column, np.ndarray)
        return column


# For the transaction the statements run in. PostgreSQL decides to JIT-compile a
# statement from its row estimates, which it cannot make well for frames that come
# out of arrays; on a large table they pass jit_above_cost, and compiling this
# statement then costs more than running it (a 5,000-bucket page: 0.08 s without,
# 2 s with optimization and inlining). Nor can it tell that each chunk's arrays are
# unnested once: it may cache the per-chunk aggregate keyed by the arrays
# (Memoize), a cache that never hits and adds about a quarter to that aggregate.
_SETTINGS = "SET LOCAL jit = off; SET LOCAL enable_memoize = off"

# Each aggregate in two steps: a partial over some frames of one bucket (one chunk's,
# or one frame's), then the final over a bucket's partials. The mean is carried as a
# float8 sum and divided, and rounded to real, once at the end. A chunk inside one
# bucket has its partial stored (the column of ``_STORED``); partials of one bucket
# combine as ``_COMBINE`` says.
_PARTIAL = {"mean": "sum({}::float8)", "min": "min({})", "max": "max({})"}
_STORED = {"mean": "sum", "min": "min", "max": "max"}
_COMBINE = {"mean": "sum({})", "min": "min({})", "max": "max({})"}
_FINAL = {"mean": "(sum({}) / sum(frames))::real", "min": "min({})", "max": "max({})"}

# The chunk rows of sensor $1 that can hold frames in [$2, $3): they start before $3,
# no earlier than the longest chunk span before $2 (so the range's partitions are
# the only ones read), and end at or after $2.
_OF_RANGE = """c.sensor_id = $1 AND c.start_ts < $3
          AND c.start_ts >= $2::timestamptz - (SELECT longest FROM frame_span)
          AND c.last_ts >= $2"""
# A chunk whose stored partials are its whole share of one bucket: its frames all
# lie in one bucket and in [$2, $3), and the partials asked for are stored.
_WHOLE = """c.start_ts >= $2 AND c.last_ts < $3
          AND date_bin($4::interval, c.start_ts, $5::timestamptz)
              = date_bin($4::interval, c.last_ts, $5::timestamptz)
          AND {stored}"""
# A chunk's frames in [$2, $3), a partial per bucket they reach.
_PER_FRAME = """SELECT date_bin($4::interval, f.ts, $5::timestamptz) AS bucket,
               count(*)::float8 AS frames{partials}
        FROM (SELECT unnest(c.ts) AS ts{unnest}) AS f
        WHERE f.ts >= $2 AND f.ts < $3
        GROUP BY 1"""

# Buckets of width $4 aligned on $5 (a bucket start at or before $2) of the frames in
# [$2, $3), the first $6 of them, as one row of binary arrays; and, for reading on
# past $3 (up to $7), the earliest a frame at or after $3 can be: $3 itself while a
# chunk spans it, else the start of the next chunk, else NULL (no more frames).
#
# ``spans`` reads the range's chunks from the primary key's index alone (it holds
# each chunk's end, frame count and partials), and finds from the spans alone the
# chunks whose span meets another chunk's (the next start is at or before this end,
# or an earlier end is at or after this start; NULL, for the first and last rows,
# counts as no). Only those can hold an instant twice, and only their frames are
# deduplicated, first received first, as the ``frames`` view does. ``lead`` takes
# the next row whatever the frame, so one window, one pass, serves both tests.
#
# ``summary`` adds up, per bucket, the stored partials of the chunks that lie whole
# in it and meet no other, in the same pass; it lists the keys of the others in its
# one row without a bucket. Those are read frame by frame. When they are few (a
# coarse resolution: only the chunks across a bucket boundary) each row is fetched
# by its key; when they are many (a resolution near the chunks' length, where most
# chunks cross a boundary) the range is read in key order instead, which costs about
# half as much a row as fetching each (a day at 1 s: 0.25 s against 0.5 s). Either
# way the final grouping sees about one row per chunk rather than one per frame:
# grouping the frames themselves, PostgreSQL, which expects a few rows where arrays
# unnest into millions, sorts them (a day: 120 MB through temporary files, 2.5 s).
# That grouping takes its partials sorted by bucket (a subquery with ORDER BY is
# never merged into the query around it), as the answer is: left to choose, the
# planner, misled by those estimates, may hash a day at 100 ms into 864,000 groups,
# spill them in 69 batches and sort them after all (2 s against 1 s). Frame counts
# travel as float8, exact below 2**53 and added by value: a bucket of a day can hold
# more than an integer's 2**31 frames (192 kHz, a hop of one sample), and a sum of
# bigints is a numeric (0.7 s more over those 864,000 buckets).
_BUCKETS = """
WITH spans AS (
    SELECT c.start_ts, c.seq, date_bin($4::interval, c.start_ts, $5::timestamptz) AS bucket,
           c.n_frames{stored_columns},
           {whole} AS whole,
           coalesce(lead(c.start_ts) OVER w <= c.last_ts OR max(c.last_ts) OVER w >= c.start_ts,
                    false) AS meets
    FROM chunk_frames c
    WHERE {of_range}
    WINDOW w AS (ORDER BY c.start_ts, c.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
summary AS MATERIALIZED (
    SELECT CASE WHEN whole AND NOT meets THEN bucket END AS bucket,
           count(*) AS chunks, sum(n_frames)::float8 AS frames{combined},
           array_agg(start_ts) FILTER (WHERE NOT whole OR meets) AS starts,
           array_agg(seq) FILTER (WHERE NOT whole OR meets) AS seqs,
           array_agg(meets) FILTER (WHERE NOT whole OR meets) AS meets
    FROM spans
    GROUP BY 1
),
others AS (
    SELECT unnest(starts) AS start_ts, unnest(seqs) AS seq, unnest(meets) AS meets
    FROM summary
    WHERE bucket IS NULL
),
few AS (
    SELECT 2 * coalesce(sum(chunks) FILTER (WHERE bucket IS NULL), 0) < sum(chunks) AS few
    FROM summary
),
partials AS (
    SELECT bucket, frames{names}
    FROM summary
    WHERE bucket IS NOT NULL
    UNION ALL
    -- OFFSET 0 keeps the lookup a subquery run for each key, never a join that
    -- would read the whole range for the few rows wanted.
    SELECT p.*
    FROM others AS k CROSS JOIN LATERAL (
        SELECT c.ts{arrays} FROM chunk_frames c
        WHERE c.sensor_id = $1 AND c.start_ts = k.start_ts AND c.seq = k.seq
        OFFSET 0
    ) AS c CROSS JOIN LATERAL (
        {per_frame}
    ) AS p
    WHERE NOT k.meets AND (SELECT few FROM few)
    UNION ALL
    SELECT p.*
    FROM chunk_frames c CROSS JOIN LATERAL (
        {per_frame}
    ) AS p
    WHERE {of_range}
      AND NOT ({whole})
      AND (c.start_ts, c.seq) NOT IN (SELECT start_ts, seq FROM others WHERE meets)
      AND NOT (SELECT few FROM few)
    UNION ALL
    SELECT date_bin($4::interval, ts, $5::timestamptz), count(*)::float8{partials}
    FROM (
        SELECT DISTINCT ON (ts) ts{names} FROM (
            SELECT c.received_at, c.seq, unnest(c.ts) AS ts{unnest}
            FROM chunk_frames c JOIN others k USING (start_ts, seq)
            WHERE {of_range} AND k.meets
        ) AS overlapping
        WHERE ts >= $2 AND ts < $3
        ORDER BY ts, received_at, seq
    ) AS first_received
    GROUP BY 1
),
buckets AS (
    SELECT bucket, sum(frames)::bigint AS frames{finals}
    FROM (SELECT * FROM partials ORDER BY bucket) AS sorted
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


def bucket_sql(fields: Sequence[str], agg: str) -> str:
    """The statement for ``fields`` aggregated with ``agg``: names from ``SCALARS``
    and ``AGGREGATES`` only, anything else is refused."""
    unknown = [name for name in fields if name not in SCALARS]
    if unknown:
        raise ValueError(f"only scalar fields can be aggregated, not {unknown}")
    if agg not in AGGREGATES:
        raise ValueError(f"agg must be one of {AGGREGATES}, not {agg!r}")
    partial, combine, final = _PARTIAL[agg], _COMBINE[agg], _FINAL[agg]
    stored = {name: pgcopy.partial_column(name, _STORED[agg]) for name in fields}
    partials = "".join(f", {partial.format(name)} AS {name}" for name in fields)
    unnest = "".join(f", unnest(c.{name}) AS {name}" for name in fields)
    names = "".join(f", {name}" for name in fields)
    whole = _WHOLE.format(
        stored=" AND ".join(f"c.{column} IS NOT NULL" for column in stored.values()) or "true"
    )
    return _BUCKETS.format(
        of_range=_OF_RANGE,
        whole=whole,
        per_frame=_PER_FRAME.format(partials=partials, unnest=unnest),
        stored_columns="".join(f", c.{column} AS {name}" for name, column in stored.items()),
        combined="".join(f", {combine.format(name)} AS {name}" for name in fields),
        names=names,
        arrays="".join(f", c.{name}" for name in fields),
        partials=partials,
        unnest=unnest,
        finals="".join(f", {final.format(name)} AS {name}" for name in fields),
        sends="".join(f", array_send(array_agg({name})) AS {name}" for name in fields),
    )


async def buckets(
    pool: Connections,
    sensor_id: str,
    *,
    start: datetime,
    end: datetime,
    fields: Sequence[str],
    resolution_us: int,
    agg: str,
    limit: int,
    after_ts: datetime | None = None,
) -> BucketPage:
    """The first ``limit`` buckets of the frames with ``start <= ts < end`` whose
    start is after ``after_ts`` (the last bucket start of the previous page).

    The first bucket may start before ``start`` (it holds only the frames from
    ``start`` on). A page reads only the stretch of the range its buckets need: a
    window of ``limit + 1`` buckets first, then, if gaps left it short, on from the
    next stored frame with a window sized by how full the last one was. Paging
    through a range thus reads each frame about once, and a range with data in a
    few places does not cost a query per empty stretch. No window is longer than
    ``MAX_WINDOW_US``, so no one statement runs into the statement timeout
    however long the range.
    """
    sql = bucket_sql(fields, agg)
    if not MIN_RESOLUTION_US <= resolution_us <= MAX_RESOLUTION_US:
        raise ValueError(f"resolution_us {resolution_us} outside 100 ms .. 1 d")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    width = resolution_us
    low, end_us = to_micros(start), to_micros(end)
    if after_ts is not None:
        low = max(low, _floor(to_micros(after_ts), width) + width)
    stride = timedelta(microseconds=width)
    most = MAX_WINDOW_US // width  # buckets in the longest window
    wanted = limit + 1  # one more than a page: whether another page follows
    span = min(wanted, most)  # buckets the next window covers
    parts: list[dict[str, np.ndarray]] = []
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(_SETTINGS)
        while low < end_us:
            origin = _floor(low, width)
            high = min(end_us, origin + span * width)
            row = await conn.fetchrow(
                sql,
                sensor_id,
                from_micros(low),
                from_micros(high),
                stride,
                from_micros(origin),
                wanted,
                from_micros(end_us),
            )
            part = _decode(row, fields)
            parts.append(part)
            got = len(part["ts"])
            wanted -= got
            if wanted <= 0 or high >= end_us or row["next_us"] is None:
                break
            # Short of a page: on from the next frame, in a window as much wider
            # than the buckets still wanted as this one was emptier than full.
            covered = (high - origin) // width
            grown = max(wanted, math.ceil(wanted * covered / got)) if got else 2 * covered
            span = min(grown, most)
            low = max(high, int(row["next_us"]))
    return _page(parts, fields, limit)


def _floor(micros: int, width: int) -> int:
    """The start of the bucket holding ``micros`` (floor, also before 1970)."""
    return micros // width * width


def _decode(row: Any, fields: Sequence[str]) -> dict[str, np.ndarray]:
    if row["ts"] is None:  # array_agg of no rows
        empty = {name: np.empty(0, np.float32) for name in fields}
        return {"ts": np.empty(0, np.int64), COUNT: np.empty(0, np.int64), **empty}
    ts, _ = pgcopy.decode_timestamps([row["ts"]])
    decoded = {"ts": ts, COUNT: _bigints(row["count"])}
    for name in fields:
        decoded[name], _ = pgcopy.decode_reals([row[name]])
    return decoded


def _bigints(raw: bytes) -> np.ndarray:
    """A one-dimensional ``bigint[]`` in binary format -> int64 values."""
    ndim = raw[3]
    return np.frombuffer(raw, _INT8, offset=12 + 8 * ndim)["v"].astype(np.int64)


def _page(parts: list[dict[str, np.ndarray]], fields: Sequence[str], limit: int) -> BucketPage:
    names = ["ts", COUNT, *fields]
    whole = {
        name: np.concatenate([part[name] for part in parts])
        if parts
        else np.empty(0, np.float32 if name in fields else np.int64)
        for name in names
    }
    ts = whole["ts"]
    if not bool(np.all(np.diff(ts) > 0)):
        # array_agg takes the rows in the order the sorted subquery gives them;
        # should that ever change, this restores it.
        order = np.argsort(ts, kind="stable")
        whole = {name: values[order] for name, values in whole.items()}
    more = len(whole["ts"]) > limit
    columns: dict[str, Column] = {name: whole[name][:limit] for name in (*fields, COUNT)}
    return BucketPage(whole["ts"][:limit], columns, more)
