"""The consumer a user would write first: the baseline of ``bench/endtoend.py``.

    .venv/bin/python bench/naive.py       # reads the same SOUNDSTREAM_* variables as serve

One asyncio process, one AMQP channel (prefetch ``NAIVE_PREFETCH``, default 100) and one
PostgreSQL connection. Messages are handled one at a time, in delivery order: decode
with ``soundstream.ingest.consumer.decode`` (the service's validation), compute the
same features in this process with numpy (``bench/numpy_features.py``, no pool),
then in one transaction insert the chunk into the service's ``chunks`` table (``ON
CONFLICT DO NOTHING``), and only if it was new its frames (one ``executemany`` INSERT
into its own one-row-per-frame table ``naive_frames``, ``ON CONFLICT DO NOTHING``) and
the per-sensor
summary (an upsert), commit, and ack that one message. A malformed message is rejected
without requeue, so the queue's dead-lettering takes it. It declares nothing: it
consumes the queue ``soundstream.ingest.consumer.declare_topology`` declared. SIGTERM or
SIGINT stops consuming; the message in hand is finished and acked, the rest are
left unacked for the broker to redeliver.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import aiormq
import asyncpg
from aiormq.abc import DeliveredMessage
from numpy_features import Extractor

from soundstream import config
from soundstream.config import Settings
from soundstream.core.records import frame_times_us, ns_to_us
from soundstream.errors import Malformed
from soundstream.ingest import consumer

PREFETCH = int(os.environ.get("NAIVE_PREFETCH", "100"))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

INSERT_CHUNK = """
INSERT INTO chunks (sensor_id, seq, start_ts, sample_rate, n_samples, n_frames, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING seq
"""

# The layout a user writes first: one row per frame.
FRAMES_TABLE = """
CREATE TABLE IF NOT EXISTS naive_frames (
    sensor_id text NOT NULL, ts timestamptz NOT NULL, seq bigint NOT NULL, rms real NOT NULL,
    zcr real NOT NULL, centroid real NOT NULL, bandwidth real NOT NULL, rolloff real NOT NULL,
    flatness real NOT NULL, dominant_hz real NOT NULL, mel real[] NOT NULL,
    mfcc real[] NOT NULL, PRIMARY KEY (sensor_id, ts)
)
"""

INSERT_FRAME = """
INSERT INTO naive_frames (sensor_id, ts, seq, rms, zcr, centroid, bandwidth, rolloff, flatness,
                    dominant_hz, mel, mfcc)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT DO NOTHING
"""

UPSERT_SENSOR = """
INSERT INTO sensors (sensor_id, first_ts, last_ts, chunks, frames, last_seq, last_received_at)
VALUES ($1, $2, $3, 1, $4, $5, $6)
ON CONFLICT (sensor_id) DO UPDATE SET
    first_ts = least(sensors.first_ts, excluded.first_ts),
    last_ts = greatest(sensors.last_ts, excluded.last_ts),
    chunks = sensors.chunks + 1,
    frames = sensors.frames + excluded.frames,
    last_seq = greatest(sensors.last_seq, excluded.last_seq),
    last_received_at = greatest(sensors.last_received_at, excluded.last_received_at)
"""


def at_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


async def handle(
    message: DeliveredMessage,
    conn: asyncpg.Connection,
    extract: Extractor,
    settings: Settings,
) -> bool:
    """Store one message; False if it is malformed (nothing written)."""
    try:
        chunk = consumer.decode(message, settings)
    except Malformed:
        return False
    received = datetime.now(UTC)
    features = extract(chunk.samples, chunk.sample_rate)
    n = len(features)
    times = frame_times_us(chunk.start_ns, n, settings.hop, chunk.sample_rate)
    async with conn.transaction():
        new = await conn.fetchval(
            INSERT_CHUNK,
            chunk.sensor_id,
            chunk.seq,
            at_us(ns_to_us(chunk.start_ns)),
            chunk.sample_rate,
            len(chunk.samples),
            n,
            received,
        )
        if new is None:
            return True  # stored before: a redelivery adds nothing
        if n:
            rows: list[tuple[Any, ...]] = [
                (
                    chunk.sensor_id,
                    at_us(times[i]),
                    chunk.seq,
                    float(features.rms[i]),
                    float(features.zcr[i]),
                    float(features.centroid[i]),
                    float(features.bandwidth[i]),
                    float(features.rolloff[i]),
                    float(features.flatness[i]),
                    float(features.dominant_hz[i]),
                    features.mel[i].tolist(),
                    features.mfcc[i].tolist(),
                )
                for i in range(n)
            ]
            await conn.executemany(INSERT_FRAME, rows)
        await conn.execute(
            UPSERT_SENSOR,
            chunk.sensor_id,
            at_us(times[0]) if n else None,
            at_us(times[-1]) if n else None,
            n,
            chunk.seq,
            received,
        )
    return True


async def run(settings: Settings, stop: asyncio.Event) -> int:
    """Consume until ``stop`` is set; return how many messages were acked."""
    extract = Extractor(settings.features)
    conn = await asyncpg.connect(settings.database_url)
    await conn.execute(FRAMES_TABLE)
    connection = await aiormq.connect(settings.amqp_url)
    inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
    acked = 0
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=PREFETCH)

        async def on_message(message: DeliveredMessage) -> None:
            inbox.put_nowait(message)

        consume = await channel.basic_consume(settings.queue, on_message, no_ack=False)
        stopping = asyncio.ensure_future(stop.wait())
        while True:
            getting = asyncio.ensure_future(inbox.get())
            await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break
            message = getting.result()
            assert message.delivery_tag is not None
            if await handle(message, conn, extract, settings):
                await channel.basic_ack(message.delivery_tag)
                acked += 1
            else:
                await channel.basic_reject(message.delivery_tag, requeue=False)
        await channel.basic_cancel(str(consume.consumer_tag))
    finally:
        await connection.close()
        await conn.close()
    return acked


async def serve() -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run(config.load(), stop)


def main() -> None:
    acked = asyncio.run(serve())
    print(f"naive: acked {acked} messages", flush=True)


if __name__ == "__main__":
    main()
