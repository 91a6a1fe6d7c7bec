"""A broker alarm that blocks publishers cannot wedge acks.

RabbitMQ blocks a connection that publishes while a resource alarm is on, and the
AMQP client then holds back every frame on that connection. Dead copies therefore
go out on a connection of their own with a confirm timeout: while the alarm lasts,
good chunks are still committed and acked, the malformed one goes back to the queue
each time its copy is not confirmed, and once the alarm clears it is dead-lettered.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from support import (
    channel,
    publish,
    publish_series,
    queue_depth,
    running,
    stored_chunks,
    wait_for,
)

from soundstream import config
from soundstream.ingest.consumer import declare_topology

pytestmark = pytest.mark.slow


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()


@contextmanager
def memory_alarm() -> Iterator[None]:
    """Set the broker's memory watermark below its use (an alarm), then restore it."""
    before = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")
    try:
        yield
    finally:
        if before.startswith("{absolute,"):
            rabbitmqctl("set_vm_memory_high_watermark", "absolute", before.split(",")[1][:-1])
        else:
            rabbitmqctl("set_vm_memory_high_watermark", before)


async def unacked(queue: str) -> int:
    rows = rabbitmqctl("list_queues", "name", "messages_unacknowledged").splitlines()
    return sum(int(n) for name, n in (r.split("\t") for r in rows) if name == queue)


async def test_acks_flow_while_an_alarm_blocks_publishing(topology: config.Settings) -> None:
    s = config.replace(topology, dead_letter_timeout_s=1.0)
    async with channel(s.amqp_url) as ch:
        await declare_topology(ch, s)
        await publish_series(ch, s.audio_exchange, "calm", range(6))
        await publish(ch, s.audio_exchange, b"\0\0", {"sensor_id": "calm", "seq": "seven"})
    with memory_alarm():
        async with running(s), channel(s.amqp_url) as ch:

            async def good_ones_acked() -> bool:
                return await stored_chunks(s.database_url) == 6 and await unacked(s.queue) <= 1

            await wait_for(good_ones_acked, within=30)
            assert await queue_depth(ch, s.dead_queue) == 0  # no copy got through
    async with running(s), channel(s.amqp_url) as ch:

        async def dead_lettered() -> bool:
            # At least once: a copy that timed out may still reach the broker later.
            return await queue_depth(ch, s.dead_queue) >= 1 and await unacked(s.queue) == 0

        await wait_for(dead_lettered, within=30)
        assert await queue_depth(ch, s.queue) == 0
        for _ in range(await queue_depth(ch, s.dead_queue)):
            copy = await ch.basic_get(s.dead_queue, no_ack=True)
            assert (copy.header.properties.headers or {})["x-error"].startswith("header seq")
    assert await stored_chunks(s.database_url) == 6
