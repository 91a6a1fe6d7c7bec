"""Announcing committed chunks to every API replica, and reading what was announced.

The writer announces each committed batch with PostgreSQL's ``NOTIFY`` on
``CHANNEL``, inside the batch's own transaction: PostgreSQL delivers a notification
only when its transaction commits, so a rolled-back batch announces nothing. An
announcement names chunks, never their data: each sensor's new seqs as ranges, so
a batch of 64 chunks is one short line, and a batch whose line would pass
``MAX_PAYLOAD`` bytes (NOTIFY refuses 8000) is split over several notifications.
Only chunks with frames are announced: a chunk too short for a frame has nothing
to show.

A payload, one line of ASCII::

    v1 <stamp_us> <sensor_id>:<seqs>[,<seqs>...] <sensor_id>:<seqs> ...

where ``<seqs>`` is ``<seq>`` or ``<first>-<last>`` (inclusive), ranges ascending,
and ``stamp_us`` is the database clock (UNIX microseconds) when the batch's last
statement ran, just before its COMMIT. Sensor ids hold no space or colon (the wire
format), so the line splits unambiguously.

An API replica keeps one connection that ``LISTEN``s (``listen``, an actor that
reconnects with backoff when the database goes away) and reads the announced
chunks' frames by sensor and seq (``read_chunks``), decoding them as ``read`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import numpy as np
import structlog
from anyio.abc import TaskStatus

from soundstream.core.fields import ARRAY_FIELDS, FEATURE_FIELDS
from soundstream.failures import describe, unavailable
from soundstream.status import DOWN, STARTING, UP, Check
from soundstream.store import pgcopy
from soundstream.store.read import Column, Connections, FeaturePage

log = structlog.get_logger(__name__)

CHANNEL = "soundstream_chunks"
VERSION = "v1"
# NOTIFY's payload must be shorter than 8000 bytes; the stamp and version take at
# most 24 of what is left.
MAX_PAYLOAD = 7900
_STAMP_ROOM = 24

# One statement a batch, however many notifications it splits into: the stamp is
# taken once, as late in the transaction as the writer can.
NOTIFY_SQL = f"""
SELECT pg_notify($1, '{VERSION} '
    || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text || ' ' || part)
FROM unnest($2::text[]) AS part
"""

PING_S = 5.0
CONNECT_TIMEOUT_S = 5.0
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0


# --- the payload: pure ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one notification said: when (database clock, UNIX microseconds), and
    each sensor's announced seqs as inclusive ranges."""

    stamp_us: int
    ranges: dict[str, list[tuple[int, int]]]


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Distinct seqs as ascending inclusive ranges: 1,2,3,7 -> (1, 3), (7, 7)."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def _entries(sensor_id: str, ranges: list[tuple[int, int]], room: int) -> list[str]:
    """``sensor:ranges`` items, each at most ``room`` bytes (a sensor with very many
    ranges takes several)."""
    entries: list[str] = []
    current = ""
    for first, last in ranges:
        part = str(first) if first == last else f"{first}-{last}"
        if current and len(current) + 1 + len(part) > room:
            entries.append(current)
            current = ""
        current = f"{current},{part}" if current else f"{sensor_id}:{part}"
    if current:
        entries.append(current)
    return entries


def payloads(chunks: Iterable[tuple[str, int]], limit: int = MAX_PAYLOAD) -> list[str]:
    """The announcement of ``(sensor_id, seq)`` pairs: the parts of as few payloads
    as fit, each within ``limit`` bytes once ``NOTIFY_SQL`` puts the version and the
    stamp before it. Sensors in id order."""
    by_sensor: dict[str, list[int]] = {}
    for sensor_id, seq in chunks:
        by_sensor.setdefault(sensor_id, []).append(seq)
    room = limit - _STAMP_ROOM
    parts: list[str] = []
    current = ""
    for sensor_id in sorted(by_sensor):
        for entry in _entries(sensor_id, seq_ranges(by_sensor[sensor_id]), room):
            if current and len(current) + 1 + len(entry) > room:
                parts.append(current)
                current = ""
            current = f"{current} {entry}" if current else entry
    if current:
        parts.append(current)
    return parts


def parse(payload: str) -> Announcement:
    """A notification's payload; ``ValueError`` for anything else."""
    words = payload.split(" ")
    if len(words) < 3 or words[0] != VERSION:
        raise ValueError(f"not a {VERSION} announcement: {payload[:60]!r}")
    stamp_us = int(words[1])
    ranges: dict[str, list[tuple[int, int]]] = {}
    for word in words[2:]:
        sensor_id, colon, listed = word.partition(":")
        if not colon or not sensor_id:
            raise ValueError(f"bad entry {word[:60]!r}")
        for item in listed.split(","):
            first, dash, last = item.partition("-")
            pair = (int(first), int(last) if dash else int(first))
            if pair[0] < 0 or pair[1] < pair[0]:
                raise ValueError(f"bad range {item[:30]!r}")
            ranges.setdefault(sensor_id, []).append(pair)
    return Announcement(stamp_us, ranges)


async def announce(conn: asyncpg.Connection, chunks: Sequence[tuple[str, int]]) -> None:
    """Inside the writer's transaction: announce these committed-to-be chunks."""
    parts = payloads(chunks)
    if parts:
        await conn.execute(NOTIFY_SQL, CHANNEL, parts)


# --- reading what was announced -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkFrames:
    """One stored chunk's frames, as stored (times ascending)."""

    seq: int
    page: FeaturePage


# The chunks wanted are found by their key in ``chunks`` (sensor_id, seq); their
# start times then bound the scan of ``chunk_frames``, which prunes its day
# partitions when the statement runs.
_CHUNKS_BY_SEQ = """
WITH wanted AS MATERIALIZED (
    SELECT seq, start_ts FROM chunks
    WHERE sensor_id = $1 AND n_frames > 0 AND (seq > $2 OR seq = ANY($3::bigint[]))
    ORDER BY seq
    LIMIT $4
)
SELECT f.seq, array_send(f.ts) AS ts{columns}
FROM chunk_frames f
WHERE f.sensor_id = $1
  AND f.start_ts >= (SELECT min(start_ts) FROM wanted)
  AND f.start_ts <= (SELECT max(start_ts) FROM wanted)
  AND f.seq IN (SELECT seq FROM wanted)
ORDER BY f.seq
"""

_LAST_SEQ = """
SELECT greatest(
    (SELECT max(last_seq) FROM sensors WHERE sensor_id = $1),
    (SELECT max(last_seq) FROM sensor_deltas WHERE sensor_id = $1))
"""

_LATEST_WITH_FRAMES = """
SELECT seq FROM chunks WHERE sensor_id = $1 AND n_frames > 0
ORDER BY seq DESC LIMIT 1 OFFSET $2
"""


async def last_seq(pool: Connections, sensor_id: str) -> int | None:
    """The highest seq the sensor has sent (any replica, committed); None if it has
    sent nothing."""
    async with pool.acquire() as conn:
        found: int | None = await conn.fetchval(_LAST_SEQ, sensor_id)
    return found


async def seq_before_latest(pool: Connections, sensor_id: str, chunks: int) -> int | None:
    """The seq just before the sensor's last ``chunks`` chunks with frames (None when
    it has no more than that): reading after it gives those chunks."""
    async with pool.acquire() as conn:
        found: int | None = await conn.fetchval(_LATEST_WITH_FRAMES, sensor_id, chunks)
    return found


async def read_chunks(
    pool: Connections,
    sensor_id: str,
    *,
    after: int,
    also: Sequence[int] = (),
    fields: Sequence[str],
    limit: int,
) -> list[ChunkFrames]:
    """The sensor's chunks with frames whose seq is above ``after`` or in ``also``,
    at most ``limit``, in seq order, with the ``fields`` asked for."""
    unknown = [name for name in fields if name not in FEATURE_FIELDS]
    if unknown:
        raise ValueError(f"unknown feature fields: {unknown}")
    sql = _CHUNKS_BY_SEQ.format(
        columns="".join(f", array_send(f.{name}) AS {name}" for name in fields)
    )
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, sensor_id, after, list(also), limit)
    return _decode(rows, fields)


def _decode(rows: Sequence[Any], fields: Sequence[str]) -> list[ChunkFrames]:
    """Each row's frames, decoded for all rows at once and cut per chunk."""
    if not rows:
        return []
    ts, counts = pgcopy.decode_timestamps([row["ts"] for row in rows])
    bounds = np.cumsum([0, *counts])
    columns: dict[str, list[Column]] = {name: [] for name in fields}
    for name in fields:
        values, sizes = pgcopy.decode_reals([row[name] for row in rows])
        ends = np.cumsum([0, *sizes])
        for i, count in enumerate(counts):
            part = values[ends[i] : ends[i + 1]]
            if name in ARRAY_FIELDS:
                part = part.reshape(count, len(part) // count) if count else part.reshape(0, 0)
            columns[name].append(part)
    return [
        ChunkFrames(
            int(row["seq"]),
            FeaturePage(
                ts[bounds[i] : bounds[i + 1]],
                {name: columns[name][i] for name in fields},
                more=False,
            ),
        )
        for i, row in enumerate(rows)
    ]


# --- the listener -------------------------------------------------------------------


class Feed:
    """What the listener reports to: each announcement, each (re)connection (after
    which anything announced while it was away must be read again), and its state
    as a readiness check."""

    def __init__(
        self,
        on_announce: Callable[[Announcement], None],
        on_connect: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._on_announce = on_announce
        self._on_connect = on_connect
        self._clock = clock
        self.check = Check(STARTING, "starting", clock())
        self.listening = False
        self.received = 0
        self.malformed = 0

    def connected(self) -> None:
        self.listening = True
        self.check = Check(UP, "", self._clock())
        self._on_connect()

    def lost(self, reason: str) -> None:
        if self.listening or self.check.reason != reason:
            self.check = Check(DOWN, reason, self._clock())
        self.listening = False

    def notified(self, payload: str) -> None:
        try:
            announcement = parse(payload)
        except ValueError as exc:
            self.malformed += 1
            log.warning("announcement_malformed", error=str(exc))
            return
        self.received += 1
        self._on_announce(announcement)


async def listen(
    database_url: str,
    feed: Feed,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """``LISTEN`` on a connection of its own until cancelled, reconnecting with
    backoff whenever the connection is lost or stops answering."""
    task_status.started()
    backoff = MIN_BACKOFF_S
    while True:
        try:
            await _listen_once(database_url, feed)
        except Exception as exc:
            if feed.listening:
                backoff = MIN_BACKOFF_S  # it had recovered: a new failure starts over
            # Never fatal: without the feed, live streams poll (see ``http.live``),
            # and everything else this process serves does not need it.
            feed.lost(f"unreachable ({type(exc).__name__})")
            line = log.warning if unavailable(exc) else log.error
            line("live_feed_lost", error=describe(exc), retry_in_s=backoff)
        await anyio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


async def _listen_once(database_url: str, feed: Feed) -> None:
    conn = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    lost = anyio.Event()

    def notified(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        feed.notified(payload)

    def terminated(_conn: object) -> None:
        lost.set()

    try:
        conn.add_termination_listener(terminated)
        await conn.add_listener(CHANNEL, notified)
        feed.connected()
        log.info("live_feed_listening", channel=CHANNEL)
        while not lost.is_set():
            with anyio.move_on_after(PING_S):
                await lost.wait()
            if lost.is_set():
                break
            # A connection can die without a word (a cut network): ask it.
            with anyio.fail_after(PING_S):
                await conn.fetchval("SELECT 1")
        raise ConnectionResetError("the listening connection was closed")
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            if not conn.is_closed():
                await conn.close()
