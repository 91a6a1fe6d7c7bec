"""PostgreSQL goes away under a replica: the path is cut, or its backends are
terminated. Nothing is acked that is not committed; afterwards every chunk is
stored exactly once."""

from __future__ import annotations

import time

import pytest
from replicas import PG_PORT, Broker, Cluster, Publisher, Store, stored_exactly_once, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SENSORS = ("mic-a", "mic-b", "mic-c", "mic-d")
OUTAGE_S = 3.0


async def test_a_database_cut_pauses_acking_and_resumes_by_itself(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    proxy = cluster.proxy(PG_PORT)
    a = cluster.start("a", database_port=proxy.port, SOUNDSTREAM_BATCH_MAX_CHUNKS="4")
    await a.wait_ready()
    async with Publisher(broker) as publisher:
        total = await publisher.chunks(SENSORS, range(250))
    await store.wait_chunks(100, within=30)

    proxy.stop_listening()
    proxy.sever()
    cut = time.monotonic()

    # Once readiness says so the replica has noticed, and whatever was in flight
    # at the cut has settled: from then on nothing can commit.
    async def unready() -> bool:
        return await a.readyz() != 200

    await wait_until(unready, within=15, what="a reports unready")
    frozen = await store.chunks()
    assert frozen < total
    samples: list[tuple[int, int, int]] = []
    while time.monotonic() - cut < OUTAGE_S or len(samples) < 2:
        ready, unacked = await broker.outstanding()
        samples.append((await store.chunks(), ready, unacked))
    # Nothing more is committed, nothing more is acked, and the replica keeps
    # holding its deliveries (bounded by the prefetch) while it waits.
    assert {rows for rows, _, _ in samples} == {frozen}, samples
    assert len({ready + unacked for _, ready, unacked in samples}) == 1, samples
    assert all(unacked > 0 for _, _, unacked in samples), samples
    outstanding = samples[0][1] + samples[0][2]
    assert outstanding >= total - frozen  # a batch may have committed unseen at the cut
    assert a.running()

    proxy.listen()
    restored = time.monotonic()
    recovered, _ = await stored_exactly_once(
        store, broker, dict.fromkeys(SENSORS, 250), since=restored
    )
    await a.wait_ready(within=20)
    print(
        f"\n[faults] database cut: {frozen}/{total} stored at the cut; down {OUTAGE_S} s with"
        f" {len(samples)} samples, unacked held {sorted({u for _, _, u in samples})};"
        f" all stored {recovered:.1f} s after the path came back"
    )


async def test_terminated_database_backends_lose_and_double_nothing(
    cluster: Cluster, broker: Broker, store: Store
) -> None:
    a = cluster.start("a", SOUNDSTREAM_BATCH_MAX_CHUNKS="4")
    await a.wait_ready()
    async with Publisher(broker) as publisher:
        total = await publisher.chunks(SENSORS, range(400))
    conn = await store.conn()
    terminated: list[tuple[int, int]] = []

    async def backends() -> list[int]:
        """The replica's backends: every one of the test's database but the test's own
        (none for a moment while the replica waits to reconnect)."""
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [row["pid"] for row in rows]

    for round_ in range(2):
        # The second time, only once the replica has written again after the first.
        threshold = 100 if round_ == 0 else terminated[-1][0] + 20
        await store.wait_chunks(threshold, within=30)
        pids = await wait_until(backends, within=10, what="the replica connected")
        killed = sum([await conn.fetchval("SELECT pg_terminate_backend($1)", p) for p in pids])
        at = await store.chunks()
        assert killed >= 1
        assert at < total
        terminated.append((at, killed))
    started = time.monotonic()
    recovered, _ = await stored_exactly_once(
        store, broker, dict.fromkeys(SENSORS, 400), since=started
    )
    await a.wait_ready(within=20)
    print(
        f"\n[faults] pg_terminate_backend: (stored, backends terminated) {terminated};"
        f" all stored {recovered:.1f} s after the second"
    )
