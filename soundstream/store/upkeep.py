"""Keeping the store in shape while it is written: summary deltas folded into
``sensors`` and seq run deltas into ``seq_runs``, day partitions of
``chunk_frames`` created ahead, and retention.

Any replica may run any of these at any time. Each takes a transaction-level
advisory lock, so two replicas never do the same work at once, and a replica that
finds the lock taken skips the round instead of waiting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

from soundstream.store.locks import FOLD_LOCK, PARTITION_LOCK

log = structlog.get_logger(__name__)

PARTITION_PREFIX = "chunk_frames_"
LOCK_TIMEOUT_MS = 5000
_DAY_NAME = re.compile(r"chunk_frames_(\d{8})")

_FOLD = """
WITH moved AS (DELETE FROM sensor_deltas RETURNING *),
summed AS (
    SELECT sensor_id, min(first_ts) AS first_ts, max(last_ts) AS last_ts,
           sum(chunks) AS chunks, sum(frames) AS frames, max(last_seq) AS last_seq,
           max(last_received_at) AS last_received_at
    FROM moved GROUP BY sensor_id
),
folded AS (
    INSERT INTO sensors (sensor_id, first_ts, last_ts, chunks, frames, last_seq,
                         last_received_at)
    SELECT * FROM summed ORDER BY sensor_id
    ON CONFLICT (sensor_id) DO UPDATE SET
        first_ts = least(sensors.first_ts, excluded.first_ts),
        last_ts = greatest(sensors.last_ts, excluded.last_ts),
        chunks = sensors.chunks + excluded.chunks,
        frames = sensors.frames + excluded.frames,
        last_seq = greatest(sensors.last_seq, excluded.last_seq),
        last_received_at = greatest(sensors.last_received_at, excluded.last_received_at)
    RETURNING 1
)
SELECT count(*) FROM folded
"""

# The runs added since the last fold, merged with the folded runs they overlap or
# touch: those are deleted and the merged runs inserted. Runs are disjoint and
# sorted, so the folded runs a new run [f, l] touches are the last one starting
# before f (if it reaches f - 1) and those starting in [f, l + 1]: two index range
# scans, however many runs the sensor has. They are deleted by row address (a TID
# scan, whatever the planner guesses of the deltas' number: a join could scan the
# whole table), which only this fold and retention, both under the fold lock, ever
# change. The insert reads what the delete returned (through a sort), so the old
# rows are gone before the merged ones, which may keep their keys, go in.
_FOLD_RUNS = """
WITH moved AS (DELETE FROM seq_run_deltas RETURNING sensor_id, first_seq, last_seq),
touched AS (
    DELETE FROM seq_runs
    WHERE ctid = ANY (ARRAY(
        SELECT t.ctid
        FROM moved m
        CROSS JOIN LATERAL (
            (SELECT ctid, last_seq FROM seq_runs
             WHERE sensor_id = m.sensor_id AND first_seq < m.first_seq
             ORDER BY first_seq DESC LIMIT 1)
            UNION ALL
            SELECT ctid, last_seq FROM seq_runs
            WHERE sensor_id = m.sensor_id
              AND first_seq >= m.first_seq AND first_seq <= m.last_seq + 1
        ) AS t
        WHERE t.last_seq >= m.first_seq - 1
    ))
    RETURNING sensor_id, first_seq, last_seq
),
pieces AS (
    SELECT sensor_id, first_seq, last_seq FROM moved
    UNION ALL
    SELECT sensor_id, first_seq, last_seq FROM touched
),
-- A piece starts a new run unless it overlaps or touches one before it.
marked AS (
    SELECT sensor_id, first_seq, last_seq,
           CASE WHEN first_seq <= 1 + max(last_seq) OVER (
                    PARTITION BY sensor_id ORDER BY first_seq, last_seq
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                THEN 0 ELSE 1 END AS starts
    FROM pieces
),
numbered AS (
    SELECT sensor_id, first_seq, last_seq,
           sum(starts) OVER (PARTITION BY sensor_id ORDER BY first_seq, last_seq
                             ROWS UNBOUNDED PRECEDING) AS run
    FROM marked
)
INSERT INTO seq_runs (sensor_id, first_seq, last_seq)
SELECT sensor_id, min(first_seq), max(last_seq) FROM numbered GROUP BY sensor_id, run
"""

_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'chunk_frames'::regclass
"""

# The chunks that expire, and what they took from each sensor's summary.
_EXPIRE_CHUNKS = """
WITH gone AS (DELETE FROM chunks WHERE start_ts < $1 RETURNING sensor_id, seq, n_frames)
SELECT sensor_id, count(*) AS chunks, sum(n_frames)::bigint AS frames, max(seq) AS through
FROM gone GROUP BY sensor_id
"""

# Seqs below the lowest one kept are no longer reported missing (when nothing is
# kept, those up to the highest expired).
_EXPIRE_SUMMARY = """
UPDATE sensors s SET
    chunks = s.chunks - p.chunks,
    frames = s.frames - p.frames,
    expired_through_seq = greatest(
        s.expired_through_seq,
        coalesce((SELECT min(seq) - 1 FROM chunks c WHERE c.sensor_id = s.sensor_id), p.through)
    ),
    first_ts = (SELECT min(start_ts) FROM chunk_frames c WHERE c.sensor_id = s.sensor_id)
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
     AS p(sensor_id, chunks, frames, through)
WHERE s.sensor_id = p.sensor_id
"""

# The runs of those sensors at or below their expired seq: gone, or clipped when
# they reach past it. An index range scan each, over the runs that go.
_EXPIRE_RUNS = """
WITH bound AS (
    SELECT sensor_id, expired_through_seq AS through FROM sensors
    WHERE sensor_id = ANY($1::text[]) AND expired_through_seq IS NOT NULL
),
gone AS (
    DELETE FROM seq_runs r USING bound b
    WHERE r.sensor_id = b.sensor_id AND r.first_seq <= b.through AND r.last_seq <= b.through
)
UPDATE seq_runs r SET first_seq = b.through + 1
FROM bound b
WHERE r.sensor_id = b.sensor_id AND r.first_seq <= b.through AND r.last_seq > b.through
"""


async def fold_deltas(conn: asyncpg.Connection) -> int:
    """Fold the summary deltas committed so far into ``sensors``, and the seq run
    deltas into ``seq_runs``; sensors folded."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", FOLD_LOCK):
            return 0
        folded: int = await conn.fetchval(_FOLD)
        await conn.execute(_FOLD_RUNS)
    return folded


def partition_name(day: date) -> str:
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def _unix_us(moment: datetime) -> int:
    """Timestamps travel as integer microseconds on the store's connections."""
    return int(moment.timestamp()) * 1_000_000


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def _days(conn: asyncpg.Connection) -> dict[date, str]:
    days = {}
    for row in await conn.fetch(_PARTITIONS):
        match = _DAY_NAME.fullmatch(row["relname"])
        if match:
            days[datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC).date()] = match[0]
    return days


async def ensure_partitions(conn: asyncpg.Connection, days: Iterable[date]) -> list[date]:
    """Create the day partitions of ``days`` that are missing; the days created.

    Rows of such a day already in the default partition move into the new one, in
    the same transaction, so a partition can be added whatever arrived before it.
    """
    created = []
    async with conn.transaction():
        # Write batches wait while this holds the lock: give up rather than hold it
        # long behind a slow reader of a partition (upkeep tries again later).
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        existing = await _days(conn)
        for day in sorted(set(days) - set(existing)):
            await _create_day(conn, day)
            created.append(day)
    if created:
        log.info("partitions_created", days=[str(day) for day in created])
    return created


async def _create_day(conn: asyncpg.Connection, day: date) -> None:
    name = partition_name(day)
    low, high = _midnight(day), _midnight(day + timedelta(days=1))
    await conn.execute(f"CREATE TABLE {name} (LIKE chunk_frames INCLUDING ALL)")
    await conn.execute(
        f"""WITH moved AS (
                DELETE FROM chunk_frames_default WHERE start_ts >= $1 AND start_ts < $2
                RETURNING *)
            INSERT INTO {name} SELECT * FROM moved""",
        _unix_us(low),
        _unix_us(high),
    )
    await conn.execute(
        f"ALTER TABLE chunk_frames ATTACH PARTITION {name} "
        f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
    )


async def expire(conn: asyncpg.Connection, keep_days: int, now: datetime) -> list[date]:
    """Drop the day partitions wholly older than ``keep_days`` before ``now``; the
    days dropped. Their chunks leave ``chunks`` and the sensors' counts with them."""
    cutoff_day = (now - timedelta(days=keep_days)).astimezone(UTC).date()
    cutoff = _midnight(cutoff_day)
    async with conn.transaction():
        # Write batches wait while this holds the lock: give up rather than hold it
        # long behind a slow reader of a partition (upkeep tries again later).
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", FOLD_LOCK)
        await conn.execute(_FOLD)
        await conn.execute(_FOLD_RUNS)
        old = sorted(day for day in await _days(conn) if day < cutoff_day)
        for day in old:
            await conn.execute(f"DROP TABLE {partition_name(day)}")
        await conn.execute("DELETE FROM chunk_frames_default WHERE start_ts < $1", _unix_us(cutoff))
        gone = await conn.fetch(_EXPIRE_CHUNKS, _unix_us(cutoff))
        if gone:
            columns = zip(*(tuple(row) for row in gone), strict=True)
            sensors, *counts = (list(column) for column in columns)
            await conn.execute(_EXPIRE_SUMMARY, sensors, *counts)
            await conn.execute(_EXPIRE_RUNS, sensors)
    if old:
        log.info("partitions_expired", days=[str(day) for day in old], keep_days=keep_days)
    return old
