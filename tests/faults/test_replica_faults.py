"""A replica, or a part of one, dies: SIGKILL, a killed pool worker, a drain that
runs out of time, a crash loop. Every chunk ends up stored exactly once and the
broker holds nothing back."""

from __future__ import annotations

import os
import signal
import time

import pytest
from replicas import (
    Broker,
    Cluster,
    Publisher,
    Store,
    TableLock,
    mid_stream,
    stored_exactly_once,
    wait_until,
)
from testenv import PG_ADMIN_URL

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SENSORS = ("mic-a", "mic-b", "mic-c", "mic-d")


def every(per_sensor: int) -> dict[str, int]:
    return dict.fromkeys(SENSORS, per_sensor)


async def test_sigkill_of_a_replica_mid_batch_loses_and_doubles_nothing(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    # debug: each committed batch is logged, so A's output shows it was writing.
    options = {"SOUNDSTREAM_BATCH_MAX_CHUNKS": "8", "SOUNDSTREAM_LOG_LEVEL": "debug"}
    a, b = cluster.start("a", **options), cluster.start("b", **options)
    await a.wait_ready()
    await b.wait_ready()
    lock = TableLock(store.url)
    async with Publisher(broker) as publisher:
        total = await publisher.chunks(SENSORS, range(8))
        await wait_until(lambda: a.count("batch_written") > 0, within=30, what="a commits")
        # Hold every commit: A is then in the middle of a batch (its transaction
        # waits on the lock) and holds deliveries it has not acked. The rest goes
        # out only now: a drains faster than it could be published.
        await lock.acquire()
        total += await publisher.chunks(SENSORS, range(8, 150))
    try:
        await wait_until(lambda: lock.waiting("a"), within=15, what="a's batch waits on the lock")
        held = await wait_until(
            lambda: broker.unacked_by("a"), within=15, what="a holds unacked deliveries"
        )
        stored = await lock.chunks()
        assert stored < total
        killed = time.monotonic()
        a.kill()

        async def gone() -> bool:
            return all(c.name != "a" for c in await broker.connections())

        await wait_until(gone, within=10, what="the broker drops a's connection")

        # a's deliveries are back: in the queue, or already handed to b within its
        # prefetch (b's own commits wait on the same lock). Nothing was acked that
        # is not stored, nothing stored was left unacked.
        async def returned() -> tuple[int, int] | None:
            ready, unacked = await broker.outstanding()
            back = ready + unacked == total - stored and await broker.unacked_by("a") == 0
            return (ready, unacked) if back else None

        await wait_until(
            returned,
            within=10,
            what=f"ready + unacked == {total - stored}, none held by a",
            describe=broker.outstanding_text,
        )
    finally:
        await lock.release()
    recovered, stats = await stored_exactly_once(store, broker, every(150), since=killed)
    assert b.running() and await b.readyz() == 200
    assert "Traceback" not in b.output()
    print(
        f"\n[faults] sigkill: a held {held} unacked, {stored}/{total} stored at the kill;"
        f" all stored {recovered:.1f} s after it; queue {stats}"
    )


async def test_a_killed_pool_worker_loses_nothing_and_the_replica_recovers(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    busy = await mid_stream(cluster, store, SENSORS, 250, stored_first=100)
    a, start, total = busy.replica, busy.start, busy.total
    [worker] = a.pool_workers()
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    at_kill = await store.chunks()
    assert at_kill < total

    await store.wait_chunks(total, within=45)
    recovered = time.monotonic() - killed
    await broker.wait_settled()
    await store.assert_exactly(every(250))
    await a.wait_ready(within=20)
    assert a.running()
    workers = a.pool_workers()
    assert workers and worker not in workers
    # Whether the pool alone was replaced or the pipeline restarted: no connection
    # or consumer more than at the start.
    after = await broker.footprint()
    assert after.like(start), (start, after)
    print(
        f"\n[faults] pool worker: killed at {at_kill}/{total} stored; all stored"
        f" {recovered:.1f} s later; new worker {workers}"
    )


async def test_sigterm_past_the_drain_deadline_exits_0_and_leaves_the_rest_to_redelivery(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    drain_s = 0.5
    a = cluster.start(
        "a", SOUNDSTREAM_BATCH_MAX_CHUNKS="8", SOUNDSTREAM_DRAIN_TIMEOUT_S=str(drain_s)
    )
    await a.wait_ready()
    async with Publisher(broker) as publisher:
        total = await publisher.chunks(SENSORS, range(4))
        await store.wait_chunks(16, within=30)
        # The rest goes out only once commits are held: a drains faster than it
        # could be published, so only then is it sure to be mid-batch.
        lock = TableLock(store.url)
        await lock.acquire()
        total += await publisher.chunks(SENSORS, range(4, 100))
    try:
        await wait_until(lambda: lock.waiting("a"), within=15, what="a's batch waits on the lock")
        held = await wait_until(
            lambda: broker.unacked_by("a"), within=15, what="a holds unacked deliveries"
        )
        stored = await lock.chunks()
        terminated = time.monotonic()
        a.terminate()
        code = await a.wait_exit(within=drain_s + 10)
        took = time.monotonic() - terminated
        output = a.output()
        assert code == 0, a.tail()
        assert took < drain_s + 5
        assert a.count("drain_timeout") == 1, a.tail()
        assert "Traceback" not in output
        assert await broker.connections() == []

        # Everything not committed is back in the queue, ready for another replica.
        async def returned() -> bool:
            return await broker.outstanding() == (total - stored, 0)

        await wait_until(
            returned,
            within=10,
            what=f"{total - stored} ready, 0 unacked",
            describe=broker.outstanding_text,
        )
    finally:
        await lock.release()

    b = cluster.start("b")
    await b.wait_ready()
    await stored_exactly_once(store, broker, every(100), since=time.monotonic())
    print(
        f"\n[faults] sigterm: a held {held} unacked, {stored}/{total} stored; exited {code}"
        f" {took:.1f} s after SIGTERM (drain limit {drain_s} s); b stored the rest"
    )


async def test_a_crash_loop_exits_1_with_one_line_naming_the_fix(cluster: Cluster) -> None:
    # A database without the schema: the pipeline fails the same way on every start.
    a = cluster.start(
        "a",
        database_url=PG_ADMIN_URL,
        SOUNDSTREAM_MAX_RESTARTS="1",
        SOUNDSTREAM_RESTART_WINDOW_S="60",
    )
    started = time.monotonic()
    code = await a.wait_exit(within=30)
    took = time.monotonic() - started
    output = a.output()
    assert code == 1, a.tail()
    lines = [line for line in output.splitlines() if "restart_budget_exhausted" in line]
    assert len(lines) == 1, output
    assert "soundstream migrate" in lines[0]
    assert "Traceback" not in output
    assert took < 20
    print(f"\n[faults] crash loop: exit {code} after {took:.1f} s: {lines[0]}")


async def test_a_pipeline_restart_closes_its_old_connections_and_redelivers_what_they_held(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    busy = await mid_stream(cluster, store, SENSORS, 150, stored_first=60)
    a, start, total = busy.replica, busy.start, busy.total

    # The next batch's INSERT fails inside PostgreSQL: not a lost connection, so the
    # writer does not retry it; the pipeline crashes while its consumer holds a
    # prefetch of deliveries, and restarts.
    await store.fail_next_write()
    await wait_until(store.write_failed, within=15, what="the injected write failure")
    crashed = time.monotonic()

    async def replaced() -> bool:
        # The old connections, their channels and the deliveries they held are
        # gone; the new run has as many connections and one consumer.
        now = await broker.footprint()
        return now.like(start) and now.connections.isdisjoint(start.connections)

    await wait_until(
        replaced,
        within=15,
        what="new connections and one consumer, none of the old",
        describe=broker.outstanding_text,
    )
    took_over = time.monotonic() - crashed

    # Hold commits and compare: every delivery not stored is back in the queue or
    # held by the new consumer; none is lost, none is stuck with the old one.
    lock = TableLock(store.url)
    await lock.acquire()
    try:
        stored = await lock.chunks()

        async def accounted() -> tuple[int, int] | None:
            ready, unacked = await broker.outstanding()
            return (ready, unacked) if ready + unacked == total - stored else None

        ready, unacked = await wait_until(
            accounted,
            within=10,
            what=f"ready + unacked == {total - stored}",
            describe=broker.outstanding_text,
        )
    finally:
        await lock.release()
    drained, _ = await stored_exactly_once(store, broker, every(150), since=crashed)
    after = await broker.footprint()
    assert after.like(start), (start, after)
    await a.wait_ready(within=20)
    assert a.running()
    print(
        f"\n[faults] pipeline restart: new connection and consumer {took_over:.1f} s after the"
        f" injected write failure; then {stored}/{total} stored, {ready} ready + {unacked}"
        f" unacked; all stored {drained:.1f} s after the failure"
    )
