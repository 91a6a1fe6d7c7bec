"""Messages no replica can get past end in the dead queue; nothing else is lost; and a
failure that hits every message ends the process instead of emptying the queue.

A message whose properties the AMQP client cannot decode breaks the connection it
arrives on, and a chunk too large for the worker's memory limit fails wherever it
is extracted. Neither is ever acked: the broker counts their deliveries and, at
the queue's delivery limit, dead-letters them with ``x-death``. Good chunks on
either side are stored exactly once and the service stays ready.
"""

from __future__ import annotations

import datetime
import time

import anyio
import asyncpg
import numpy as np
import pytest
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
from soundstream.errors import RestartBudgetExhausted
from soundstream.ingest.consumer import declare_topology
from soundstream.supervisor import serve


class NanosecondTimestamp(datetime.datetime):
    """A ``timestamp`` property in nanoseconds, as a careless sensor might send:
    pamqp encodes ``int(value.timestamp())`` and cannot decode it back."""

    def timestamp(self) -> float:
        return float(time.time_ns())


async def test_poison_messages_end_in_the_dead_queue_with_x_death(
    topology: config.Settings,
) -> None:
    s = config.replace(topology, delivery_limit=3, worker_memory_mb=16, max_restarts=0)
    async with running(s) as service, channel(s.amqp_url) as ch:

        async def dead_letters(n: int) -> bool:
            return await queue_depth(ch, s.dead_queue) == n

        # 8 MiB of s16le at 8 kHz: its float samples alone are 16 MiB, more than a
        # worker may allocate beyond its start-up size here (MemoryError), wherever it goes.
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


async def test_a_write_that_fails_for_every_message_ends_the_process_not_the_queue(
    topology: config.Settings,
) -> None:
    # Every insert into chunks fails, whatever the message: no message is to blame.
    conn = await asyncpg.connect(topology.database_url)
    try:
        await conn.execute(
            """
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'every write refused by the test'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON chunks
                FOR EACH STATEMENT EXECUTE FUNCTION refuse();
            """
        )
    finally:
        await conn.close()
    s = config.replace(topology, delivery_limit=2, max_restarts=1, roles=frozenset({"ingest"}))
    async with channel(s.amqp_url) as ch:
        await declare_topology(ch, s)
        await publish_series(ch, s.audio_exchange, "fine", range(10))
        with pytest.raises(RestartBudgetExhausted, match="every write refused"):
            with anyio.fail_after(60):
                await serve(s)
        # One message may be dead-lettered before the pattern shows; the rest wait.
        assert await queue_depth(ch, s.dead_queue) <= 1
    assert await stored_chunks(s.database_url) == 0
