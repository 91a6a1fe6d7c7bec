"""The broker side: a cut connection, a restarted broker, poison messages, and a
queue declared by an older version."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiormq
import numpy as np
import pytest
from pamqp import decode
from replicas import (
    AMQP_PORT,
    DEAD_QUEUE,
    FRAMES_PER_CHUNK,
    QUEUE,
    TEST_CONNECTION,
    Broker,
    Cluster,
    NanosecondTimestamp,
    Publisher,
    Store,
    mid_stream,
    rabbitmqctl,
    stored_exactly_once,
    wait_until,
)

from soundstream.core import wire

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SENSORS = ("mic-a", "mic-b", "mic-c", "mic-d")


async def test_a_cut_broker_connection_is_replaced_and_nothing_is_lost(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    proxy = cluster.proxy(AMQP_PORT)
    a = cluster.start("a", amqp_port=proxy.port, SOUNDSTREAM_BATCH_MAX_CHUNKS="4")
    await a.wait_ready()
    start = await broker.footprint()
    assert start.consumers == 1, start
    n = len(start.connections)
    async with Publisher(broker) as publisher:
        total = await publisher.chunks(SENSORS, range(250))
    await store.wait_chunks(100, within=30)

    assert proxy.sever() == 2 * n  # every connection of the replica, both sides
    cut = time.monotonic()
    at_cut = await store.chunks()
    assert at_cut < total
    # The replica reconnects through the proxy, which kept listening.
    await wait_until(lambda: proxy.accepted >= 2 * n, within=20, what="a reconnects")
    reconnected = time.monotonic() - cut
    drained, _ = await stored_exactly_once(store, broker, dict.fromkeys(SENSORS, 250), since=cut)
    await a.wait_ready(within=20)

    # The old connections are gone for real (not left to a heartbeat timeout): as
    # many connections as at the start, all of them new, and one consumer.
    after = await broker.footprint()
    assert after.like(start), (start, after, await broker.outstanding_text())
    assert after.connections.isdisjoint(start.connections), (start, after)
    assert proxy.live == n
    print(
        f"\n[faults] broker cut: {at_cut}/{total} stored at the cut; reconnected after"
        f" {reconnected:.1f} s, all stored after {drained:.1f} s; proxy accepted {proxy.accepted};"
        f" {n} connection(s) per run, {after.consumers} consumer after recovery"
    )


@pytest.mark.broker_restart
async def test_a_restarted_broker_is_waited_for_and_nothing_is_lost(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    busy = await mid_stream(cluster, store, SENSORS, 250, stored_first=100)
    a, start, total = busy.replica, busy.start, busy.total

    stopped = time.monotonic()
    try:
        await rabbitmqctl("stop_app")
        at_stop = await store.chunks()

        async def unready() -> bool:
            return await a.readyz() == 503

        await wait_until(unready, within=15, what="a reports the broker missing")
        assert a.running()
    finally:
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup")
    down = time.monotonic() - stopped
    assert at_stop < total

    await a.wait_ready(within=45)
    back = time.monotonic() - stopped
    drained, _ = await stored_exactly_once(
        store, broker, dict.fromkeys(SENSORS, 250), since=stopped
    )
    after = await broker.footprint()
    assert after.like(start), (start, after)
    assert after.connections.isdisjoint(start.connections), (start, after)
    print(
        f"\n[faults] broker restart: {at_stop}/{total} stored at stop_app; broker down"
        f" {down:.1f} s; a ready again after {back:.1f} s, all stored after {drained:.1f} s"
    )


def _lenient_timestamp(value: bytes) -> tuple[int, Any]:
    """pamqp's timestamp decoder, but a value it cannot turn into a datetime comes
    back as the raw integer (so that the test can read what the service cannot)."""
    (raw,) = struct.unpack(">Q", value[:8])
    try:
        return 8, datetime.fromtimestamp(raw / 1000 if raw > 0xFFFFFFFF else raw, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return 8, raw


@asynccontextmanager
async def _reader(broker: Broker) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(broker.url(name=f"{TEST_CONNECTION}-reader"))
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def test_poison_messages_are_dead_lettered_and_the_fleet_keeps_going(
    cluster: Cluster, broker: Broker, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {
        "SOUNDSTREAM_DELIVERY_LIMIT": "3",
        "SOUNDSTREAM_WORKER_MEMORY_MB": "16",
        "SOUNDSTREAM_BATCH_MAX_CHUNKS": "8",
    }
    a, b = cluster.start("a", **options), cluster.start("b", **options)
    await a.wait_ready()
    await b.wait_ready()
    good = ("mic-a", "mic-b")
    async with Publisher(broker) as publisher:
        await publisher.chunks(good, range(20))
        # A timestamp property in nanoseconds: the AMQP client library fails to
        # decode the frame, whichever replica receives it.
        await publisher.chunk("mic-ns", 0, timestamp=NanosecondTimestamp.now(UTC))
        # The largest valid body, 8 MiB of s16le at 8000 Hz: more than a worker
        # allowed 16 MB beyond its start-up size can extract (it fails trying).
        noise = np.random.default_rng(7).uniform(-0.5, 0.5, wire.MAX_BODY_BYTES // 2)
        await publisher.chunk("mic-big", 0, samples=noise.astype(np.float32), rate=8000)
        await publisher.chunks(good, range(20, 40))
    started = time.monotonic()

    async def done() -> bool:
        return await store.chunks() >= 80 and await broker.live_ready(DEAD_QUEUE) >= 2

    async def state() -> str:
        return (
            f"stored {await store.per_sensor()}; queues {await broker.queues()};"
            f" dead ready {await broker.live_ready(DEAD_QUEUE)}\n"
            f"--- a:\n{a.tail(8)}\n--- b:\n{b.tail(8)}"
        )

    await wait_until(
        done, within=45, what="good chunks stored and both poisons dead-lettered", describe=state
    )
    took = time.monotonic() - started
    await broker.wait_settled()
    await store.assert_exactly(dict.fromkeys(good, 40), FRAMES_PER_CHUNK)
    assert await broker.live_ready(DEAD_QUEUE) == 2
    await wait_until(
        lambda: _dead_count(broker), within=15, what="list_queues counts 2 dead messages"
    )
    for replica in (a, b):
        assert replica.running(), replica.tail()
        await replica.wait_ready(within=20)

    # Read both dead messages; the test's decoder tolerates the nanosecond timestamp.
    monkeypatch.setitem(decode.METHODS, "timestamp", _lenient_timestamp)
    dead: dict[str, Any] = {}
    async with _reader(broker) as channel:
        for _ in range(2):
            message = await channel.basic_get(DEAD_QUEUE, no_ack=False)
            props = message.header.properties
            dead[str(props.message_id)] = props.headers or {}
    assert set(dead) == {"mic-ns:0", "mic-big:0"}
    for message_id, headers in dead.items():
        deaths = headers.get("x-death")
        assert deaths, (message_id, headers)
        assert deaths[0]["queue"] == QUEUE, deaths
    print(
        f"\n[faults] poison: good chunks stored and 2 dead-lettered after {took:.1f} s;"
        f" x-death reasons { {m: h['x-death'][0].get('reason') for m, h in dead.items()} }"
    )


async def _dead_count(broker: Broker) -> bool:
    stats = (await broker.queues()).get(DEAD_QUEUE)
    return stats is not None and stats.ready == 2


async def test_a_queue_declared_by_an_older_version_stops_the_replica_with_one_clear_line(
    cluster: Cluster, broker: Broker
) -> None:
    legacy = "legacy.features"
    async with Publisher(broker) as publisher:
        assert publisher.channel is not None
        channel = publisher.channel
        # The topology as the previous release declared it: no delivery limit, no
        # dead-lettering arguments.
        await channel.exchange_declare("soundstream.audio", exchange_type="topic", durable=True)
        await channel.queue_declare(legacy, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.queue_bind(legacy, "soundstream.audio", routing_key="sensor.#")
        await publisher.chunks(["old"], range(3))

    a = cluster.start("a", SOUNDSTREAM_QUEUE=legacy)
    started = time.monotonic()
    code = await a.wait_exit(within=20, describe=lambda: a.tail(8))
    took = time.monotonic() - started
    output = a.output()
    assert code != 0, output
    lines = [
        line
        for line in output.splitlines()
        if legacy in line and ("migrat" in line.lower() or "delete" in line.lower())
    ]
    assert len(lines) == 1, output  # one clear line, not a restart loop's worth
    assert "Traceback" not in output
    # The old queue and what it holds are left alone.
    assert await broker.live_ready(legacy) == 3
    print(f"\n[faults] legacy queue: exit {code} after {took:.1f} s: {lines[0]}")
