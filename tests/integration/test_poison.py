"""Messages no replica can get past end in the dead queue; nothing else is lost.

A message whose properties the AMQP client cannot decode breaks the connection it
arrives on, and a chunk too large for the worker's memory limit fails wherever it
is extracted. Neither is ever acked: the broker counts their deliveries and, at
the queue's delivery limit, dead-letters them with ``x-death``. Good chunks on
either side are stored exactly once and the service stays ready.
"""

from __future__ import annotations

import datetime
import time

import numpy as np
from pamqp.commands import Basic
from support import (
    channel,
    publish_pcm,
    publish_series,
    queue_depth,
    running,
    stored_at_least,
    stored_chunks,
    wait_for,
)

from soundstream import config


class NanosecondTimestamp(datetime.datetime):
    """A ``timestamp`` property in nanoseconds, as a careless sensor might send:
    pamqp encodes ``int(value.timestamp())`` and cannot decode it back."""

    def timestamp(self) -> float:
        return float(time.time_ns())


async def test_poison_messages_end_in_the_dead_queue_with_x_death(
    topology: config.Settings,
) -> None:
    s = config.replace(topology, delivery_limit=3, worker_memory_mb=256, max_restarts=0)
    async with running(s) as service, channel(s.amqp_url) as ch:

        async def dead_letters(n: int) -> bool:
            return await queue_depth(ch, s.dead_queue) == n

        # 8 MiB of s16le at 8 kHz: a worker started in 215 MB of address space cannot
        # extract it within 256 MB (it dies, or raises MemoryError), wherever it goes.
        await publish_series(ch, s.audio_exchange, "good", range(0, 3))
        huge = np.zeros(4 * 1024 * 1024, dtype=np.float32)
        await publish_pcm(ch, s.audio_exchange, "huge", 0, huge, 8000)
        await publish_series(ch, s.audio_exchange, "good", range(3, 6))
        await wait_for(lambda: dead_letters(1), within=90)
        dead = await ch.basic_get(s.dead_queue, no_ack=True)
        headers = dead.header.properties.headers or {}
        assert headers["sensor_id"] == "huge"
        (death,) = headers["x-death"]
        assert death["reason"] in (b"delivery_limit", "delivery_limit")
        assert death["queue"] in (s.queue, s.queue.encode())

        # aiormq cannot read this one back either, so it is counted, not read.
        await ch.basic_publish(
            b"\0\0" * 1000,
            exchange=s.audio_exchange,
            routing_key="sensor.undecodable",
            properties=Basic.Properties(
                timestamp=NanosecondTimestamp(2026, 1, 1, tzinfo=datetime.UTC),
                headers={"sensor_id": "undecodable"},
            ),
        )
        await publish_series(ch, s.audio_exchange, "good", range(6, 9))
        await wait_for(lambda: stored_at_least(s.database_url, 9), within=60)
        await wait_for(lambda: dead_letters(1), within=90)
        assert await queue_depth(ch, s.queue) == 0
        assert (await service.get("/readyz")).status_code == 200
    assert await stored_chunks(s.database_url) == 9
