"""Freshness under steady load: from a chunk's publisher confirm to its row in PostgreSQL.

    .venv/bin/python bench/freshness.py [--rate 300] [--sensors 300] [--duration 60]
                                        [--warmup 5] [--prime 50] [--roles ingest]
                                        [--poll-ms 20] [--depth-every 0.5]
                                        [--drain-timeout 60]

A fresh database and fresh AMQP names; one ``soundstream serve`` (``--roles``, default
ingest; default settings otherwise, ``SOUNDSTREAM_*`` variables of the environment
pass through) is started. Once its consumer is attached to the queue, ``--prime``
chunks from a sensor of their own are published at once and the bench waits until
all are stored, so that the run starts with the service warm (its extraction workers
start while the consumer already holds deliveries); the time from launch to then is
reported. Then the bench publishes 1 s chunks of 16 kHz s16le mono (32,000 bytes, 30
frames; four bodies encoded once) at a steady ``--rate`` for ``--warmup`` +
``--duration`` seconds: chunk k goes out at t0 + k/rate (a clock, not as fast as
possible; the publisher wakes every 10 ms at most and sends what is due, so a chunk
leaves at most 10 ms late), from sensor k mod ``--sensors`` with seq k div sensors and
start_ns advancing 1 s per seq, so with the defaults 300 sensors each send one chunk
per second. One channel with publisher confirms, every publish its own task, so
confirms are pipelined; each chunk's confirm time is recorded when the broker's ack
arrives. The bench's own CPU (publisher and poller: about 0.7 ms a chunk here, a fifth
of a core at 300/s) is reported with the other processes'.

Visibility: every ``--poll-ms`` one PostgreSQL connection asks, for each sensor with
chunks sent and not yet seen, for its rows of ``chunks`` between the lowest unseen
seq and the highest sent (one primary-key range per sensor, about rate x latency
rows in all; hash and merge joins and sequential scans are switched off for that
session so that the plan stays so as the table grows), with their ``received_at``.
A chunk is visible at the moment the poll
that first returned it was answered: an upper bound, at most one poll period (plus
the query's own time) late. Latency = visible - confirm. ``received_at`` (the
service's receive time, wall clock on this machine) splits it into queued (confirm
-> received) and pipeline (received -> committed and seen).

Figures cover the chunks published after the warm-up: latency p50/p90/p99/max; the
achieved publish rate and how late the publisher was against its clock; the queue
depth (messages ready, from a passive queue.declare every ``--depth-every`` s) and
the chunks outstanding (sent and not yet visible) over time, and whether a backlog
builds: the least-squares slope of each over the last third of the measured window,
a backlog if the depth grows by more than 1% of the rate per second. CPU over the
measured window as ``bench/endtoend.py`` counts it: serve's main process, its
children (pool workers), postgres (less the bench's polling backend), RabbitMQ, per
chunk. After the last publish the bench waits up to ``--drain-timeout`` s for every
chunk to be visible. Target: p99 < 500 ms at 300 chunks/s and no backlog.

Prints a summary table, writes everything (with a per-second timeline) to
``bench/results/freshness-<UTC time>.json``, and drops its database and AMQP names.
Needs the local PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiormq
import anyio
import asyncpg
import numpy as np
from aiormq.abc import AbstractChannel
from anyio.abc import Process
from endtoend import FAMILIES, TICK, Cpu, one_second_16k
from memory import (
    AMQP,
    Outgoing,
    Shape,
    Target,
    fresh,
    new_target,
    outgoing,
    publish,
    serve_env,
    stop,
    write_result,
)
from pamqp.commands import Basic

RESULTS = Path(__file__).parent / "results"
TARGET_P99_MS = 500.0
BACKLOG_SLOPE_SHARE = 0.01  # of the rate, per second: a growing queue
ATTACH_TIMEOUT_S = 60.0
PACE_TICK_S = 0.01  # the publisher wakes at most this often
CPU_SAMPLE_S = 1.0  # a scan of /proc costs a few ms of this process's CPU
PRIME_TIMEOUT_S = 120.0
# For the polling connection only: one primary-key range scan per pending sensor,
# whatever the planner thinks of the table's size.
FORCE_INDEX = "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off"

# The chunks of each listed sensor with lo <= seq <= hi: one primary-key range scan
# per sensor, so the cost follows what is outstanding, not the table's size.
VISIBLE = """
SELECT c.sensor_id, c.seq, (extract(epoch FROM c.received_at) * 1000000)::bigint
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS p(sensor_id, lo, hi)
JOIN chunks c ON c.sensor_id = p.sensor_id AND c.seq >= p.lo AND c.seq <= p.hi
"""


@dataclass
class Records:
    """Per chunk k (sensor k mod S, seq k div S), monotonic seconds; NaN until known."""

    n: int
    sensors: int
    due: np.ndarray = field(init=False)
    sent: np.ndarray = field(init=False)
    confirmed: np.ndarray = field(init=False)
    visible: np.ndarray = field(init=False)
    received_us: np.ndarray = field(init=False)  # the service's received_at, epoch us
    sent_count: int = 0
    confirmed_count: int = 0
    refused: int = 0
    first_refusal: str | None = None
    seen: int = 0
    published_at: float | None = None  # the last publish sent

    def __post_init__(self) -> None:
        self.due, self.sent, self.confirmed, self.visible, self.received_us = (
            np.full(self.n, np.nan) for _ in range(5)
        )


# -- publishing on a clock -----------------------------------------------------------


def on_confirm(records: Records, k: int, task: asyncio.Task[Any]) -> None:
    now = time.monotonic()
    if task.cancelled():
        return
    error = task.exception()
    result = None if error else task.result()
    if isinstance(result, Basic.Ack):
        records.confirmed[k] = now
        records.confirmed_count += 1
    else:
        records.refused += 1
        records.first_refusal = records.first_refusal or repr(error or result)


async def publisher(
    channel: AbstractChannel,
    exchange: str,
    *,
    messages: Sequence[Outgoing],
    records: Records,
    t0: float,
    rate: float,
) -> None:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = set()
    records.due[: len(messages)] = t0 + np.arange(len(messages)) / rate
    k = 0
    while k < len(messages):
        now = time.monotonic()
        # Everything due by now goes out together; then sleep until the next is due,
        # but at least one tick: fewer wake-ups, each message at most a tick late.
        while k < len(messages) and records.due[k] <= now:
            m = messages[k]
            records.sent[k] = now
            task = loop.create_task(
                channel.basic_publish(
                    m.body,
                    exchange=exchange,
                    routing_key=m.routing_key,
                    properties=m.properties,
                )
            )
            task.add_done_callback(partial(on_confirm, records, k))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
            records.sent_count = k
        if k < len(messages):
            await anyio.sleep_until(max(float(records.due[k]), now + PACE_TICK_S))
    records.published_at = time.monotonic()
    await asyncio.gather(*pending, return_exceptions=True)


# -- watching PostgreSQL -------------------------------------------------------------


@dataclass
class Polls:
    count: int = 0
    query_ms: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)


async def poller(
    conn: asyncpg.Connection,
    ids: Sequence[str],
    *,
    records: Records,
    polls: Polls,
    period_s: float,
    done: anyio.Event,
    all_seen: anyio.Event,
) -> None:
    """Until ``done`` is set and everything sent is seen: then ``all_seen`` is set."""
    sensors = len(ids)
    index = {sensor_id: i for i, sensor_id in enumerate(ids)}
    lanes = np.arange(sensors)
    lo = np.zeros(sensors, np.int64)  # per sensor, the lowest seq not yet seen
    seen = np.zeros(records.n, bool)
    names = np.array(ids, dtype=object)
    due = time.monotonic()
    while not (done.is_set() and records.seen >= records.sent_count):
        sent = records.sent_count
        pending = lo * sensors + lanes < sent
        if pending.any():
            hi = (sent - 1 - lanes) // sensors
            asked = time.monotonic()
            rows = await conn.fetch(
                VISIBLE, names[pending].tolist(), lo[pending].tolist(), hi[pending].tolist()
            )
            answered = time.monotonic()
            polls.count += 1
            polls.started.append(asked)
            polls.query_ms.append((answered - asked) * 1000)
            touched = set()
            for sensor_id, seq, received_us in rows:
                lane = index[sensor_id]
                k = seq * sensors + lane
                if not seen[k]:
                    seen[k] = True
                    records.visible[k] = answered
                    records.received_us[k] = received_us
                    records.seen += 1
                    touched.add(lane)
            for lane in touched:
                while lo[lane] * sensors + lane < records.n and seen[lo[lane] * sensors + lane]:
                    lo[lane] += 1
        due = max(due + period_s, time.monotonic())
        await anyio.sleep_until(due)
    all_seen.set()


# -- watching the broker and /proc ---------------------------------------------------


@dataclass
class Timeline:
    rows: list[tuple[float, int, int, int, int, int]] = field(default_factory=list)
    # (t since t0, ready in queue, consumers, sent, confirmed, seen)


async def sampler(
    channel: AbstractChannel,
    queue: str,
    *,
    records: Records,
    timeline: Timeline,
    t0: float,
    every_s: float,
) -> None:
    due = time.monotonic()
    while True:
        declared = await channel.queue_declare(queue, passive=True)
        now = time.monotonic()
        timeline.rows.append(
            (
                round(now - t0, 3),
                int(declared.message_count or 0),
                int(declared.consumer_count or 0),
                records.sent_count,
                records.confirmed_count,
                records.seen,
            )
        )
        due = max(due + every_s, time.monotonic())
        await anyio.sleep_until(due)


@dataclass
class CpuWindow:
    cpu: Cpu
    started: float | None = None
    ended: float | None = None


async def sample_cpu(window: CpuWindow, measure_from: float, records: Records) -> None:
    """The baseline at ``measure_from``, then every ``CPU_SAMPLE_S`` (catching pids that
    come and go) until the last publish; ``end_cpu`` closes the window."""
    await anyio.sleep_until(measure_from)
    window.cpu.sample()
    window.started = time.monotonic()
    while records.published_at is None:
        await anyio.sleep(CPU_SAMPLE_S)
        window.cpu.sample()


def end_cpu(window: CpuWindow) -> None:
    if window.started is None:  # a run shorter than its warm-up
        window.cpu.sample()
        window.started = time.monotonic()
    window.cpu.end()
    window.ended = time.monotonic()


async def wait_attached(channel: AbstractChannel, queue: str, process: Process) -> float:
    started = time.monotonic()
    with anyio.fail_after(ATTACH_TIMEOUT_S):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"serve exited with status {process.returncode}")
            declared = await channel.queue_declare(queue, passive=True)
            if declared.consumer_count:
                return time.monotonic() - started
            await anyio.sleep(0.1)


async def prime(
    channel: AbstractChannel,
    target: Target,
    conn: asyncpg.Connection,
    process: Process,
    *,
    shape: Shape,
    chunks: int,
    t0: int,
    launched: float,
) -> float:
    """Publish ``chunks`` from a sensor of their own and wait until all are visible,
    so that the paced run starts with the service warm; seconds since launch."""
    sensor_id = f"{target.tag}-prime"
    messages = [outgoing(sensor_id, seq, shape, t0) for seq in range(chunks)]
    await publish(channel, target.settings.audio_exchange, messages, max(1, chunks))
    with anyio.fail_after(PRIME_TIMEOUT_S):
        while chunks:
            if process.returncode is not None:
                raise RuntimeError(f"serve exited with status {process.returncode}")
            seen = await conn.fetchval(
                "SELECT count(*) FROM chunks WHERE sensor_id = $1", sensor_id
            )
            if seen >= chunks:
                break
            await anyio.sleep(0.05)
    return time.monotonic() - launched


async def fail_on_exit(process: Process) -> None:
    status = await process.wait()
    raise RuntimeError(f"serve exited with status {status} during the run")


# -- one run -------------------------------------------------------------------------


def env_for(database: str, names: dict[str, str], roles: str) -> dict[str, str]:
    return {**serve_env(database, names), "SOUNDSTREAM_ROLES": roles}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    target = new_target("fresh", SOUNDSTREAM_ROLES=args.roles)
    shape = one_second_16k()
    n = round(args.rate * (args.warmup + args.duration))
    ids = [f"{target.tag}-{i:04d}" for i in range(args.sensors)]
    audio_t0 = (time.time_ns() // 10**9 - 1) * 10**9
    messages = [
        outgoing(ids[k % args.sensors], k // args.sensors, shape, audio_t0) for k in range(n)
    ]
    records, polls, timeline = Records(n, args.sensors), Polls(), Timeline()
    async with fresh(target) as channel:
        probe = await aiormq.connect(AMQP)
        conn = await asyncpg.connect(target.database)
        launched = time.monotonic()
        process = await anyio.open_process(
            [sys.executable, "-m", "soundstream", "serve"],
            env=env_for(target.database, target.names, args.roles),
            stdout=None,
            stderr=None,
        )
        try:
            probe_channel = await probe.channel()
            attach_s = await wait_attached(probe_channel, target.settings.queue, process)
            primed_s = await prime(
                channel,
                target,
                conn,
                process,
                shape=shape,
                chunks=args.prime,
                t0=audio_t0,
                launched=launched,
            )
            print(
                f"serve attached after {attach_s:.1f} s, {args.prime} priming chunks visible "
                f"after {primed_s:.1f} s; publishing {n} chunks at {args.rate:g}/s from "
                f"{args.sensors} sensors",
                flush=True,
            )
            await conn.execute(FORCE_INDEX)
            backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            cpu = CpuWindow(Cpu(process.pid, {backend}, target.tag))
            done, all_seen = anyio.Event(), anyio.Event()
            offset = time.time() - time.monotonic()  # wall = monotonic + offset
            t0 = time.monotonic() + 0.2
            measure_from = t0 + args.warmup
            async with anyio.create_task_group() as tg:
                tg.start_soon(fail_on_exit, process)
                tg.start_soon(
                    partial(
                        sampler,
                        probe_channel,
                        target.settings.queue,
                        records=records,
                        timeline=timeline,
                        t0=t0,
                        every_s=args.depth_every,
                    )
                )
                tg.start_soon(sample_cpu, cpu, measure_from, records)
                async with anyio.create_task_group() as watchers:
                    watchers.start_soon(
                        partial(
                            poller,
                            conn,
                            ids,
                            records=records,
                            polls=polls,
                            period_s=args.poll_ms / 1000,
                            done=done,
                            all_seen=all_seen,
                        )
                    )
                    await publisher(
                        channel,
                        target.settings.audio_exchange,
                        messages=messages,
                        records=records,
                        t0=t0,
                        rate=args.rate,
                    )
                    end_cpu(cpu)
                    measure_to = records.published_at or time.monotonic()
                    done.set()
                    with anyio.move_on_after(args.drain_timeout):
                        await all_seen.wait()
                    watchers.cancel_scope.cancel()
                drained_at = time.monotonic()
                tg.cancel_scope.cancel()
            plan = await visible_plan(conn, ids, records.sent_count)
        finally:
            with anyio.CancelScope(shield=True):
                await stop(process, target.settings.drain_timeout_s + 10)
                await process.aclose()
                await conn.close()
                await probe.close()
    return report(
        args,
        records,
        polls,
        timeline,
        cpu,
        t0=t0,
        measure_from=measure_from,
        measure_to=measure_to,
        drained_at=drained_at,
        offset=offset,
        attach_s=attach_s,
        primed_s=primed_s,
        exit_status=process.returncode,
        plan=plan,
    )


async def visible_plan(conn: asyncpg.Connection, ids: Sequence[str], sent: int) -> list[str]:
    """The poll query's plan for one pending chunk per sensor, on the full table."""
    last = [(sent - 1 - i) // len(ids) for i in range(len(ids))]
    rows = await conn.fetch("EXPLAIN " + VISIBLE, list(ids), last, last)
    return [str(row[0]) for row in rows]


# -- results -------------------------------------------------------------------------


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"), None)
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p90": round(float(np.percentile(values, 90)), 1),
        "p99": round(float(np.percentile(values, 99)), 1),
        "max": round(float(values.max()), 1),
        "mean": round(float(values.mean()), 1),
    }


def slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    t, y = np.array(points).T
    return float(np.polyfit(t, y, 1)[0])


def report(
    args: argparse.Namespace,
    records: Records,
    polls: Polls,
    timeline: Timeline,
    window: CpuWindow,
    *,
    t0: float,
    measure_from: float,
    measure_to: float,
    drained_at: float,
    offset: float,
    attach_s: float,
    primed_s: float,
    exit_status: int | None,
    plan: list[str],
) -> dict[str, Any]:
    first = round(args.rate * args.warmup)  # the first chunk after the warm-up
    measured = slice(first, records.n)
    sent, confirmed, visible = (
        records.sent[measured],
        records.confirmed[measured],
        records.visible[measured],
    )
    ok = ~np.isnan(confirmed) & ~np.isnan(visible)
    latency = (visible - confirmed)[ok] * 1000
    received_s = records.received_us[measured] / 1e6 - offset  # as monotonic seconds
    queued = (received_s - confirmed)[ok] * 1000
    pipeline = (visible - received_s)[ok] * 1000
    confirm_ms = (confirmed - sent)[~np.isnan(confirmed)] * 1000
    late_ms = (records.sent - records.due)[measured] * 1000
    span = float(sent[-1] - sent[0]) if len(sent) > 1 else math.nan
    achieved = (len(sent) - 1) / span if span > 0 else math.nan
    wall = measure_to - measure_from

    # The last third of the measured window: does the queue grow?
    third = measure_from - t0 + 2 * wall / 3
    end = measure_to - t0
    tail = [row for row in timeline.rows if third <= row[0] <= end]
    depth_slope = slope([(row[0], row[1]) for row in tail])
    outstanding_slope = slope([(row[0], row[3] - row[5]) for row in tail])
    limit = BACKLOG_SLOPE_SHARE * args.rate
    backlog = depth_slope is not None and depth_slope > limit

    cpu = window.cpu
    seconds = cpu.seconds()
    busy, available = cpu.machine_busy_s()
    assert window.started is not None and window.ended is not None
    cpu_wall = window.ended - window.started
    in_cpu = (records.sent >= window.started) & (records.sent <= window.ended)
    chunks_in_window = int(np.sum(in_cpu))
    per_chunk = 1000 / chunks_in_window if chunks_in_window else math.nan
    total_cpu = sum(seconds[k] for k in FAMILIES)
    poll_gaps = np.diff(np.array(polls.started)) * 1000 if len(polls.started) > 1 else np.zeros(1)
    p99 = float(np.percentile(latency, 99)) if len(latency) else math.inf
    in_window = [row for row in timeline.rows if measure_from - t0 <= row[0] <= end]
    return {
        "chunks": records.n,
        "measured_chunks": records.n - first,
        "visible": int(ok.sum()),
        "not_visible": int(np.isnan(visible).sum()),
        "refused": records.refused,
        "first_refusal": records.first_refusal,
        "serve_attach_s": round(attach_s, 2),
        "primed_after_s": round(primed_s, 2),
        "publish": {
            "target_per_s": args.rate,
            "achieved_per_s": round(achieved, 1),
            "late_ms": percentiles(late_ms),
            "confirm_ms": percentiles(confirm_ms),
        },
        "latency_ms": percentiles(latency),
        "queued_ms": percentiles(queued),
        "pipeline_ms": percentiles(pipeline),
        "poll": {
            "period_ms": args.poll_ms,
            "polls": polls.count,
            "gap_ms": percentiles(poll_gaps),
            "query_ms": percentiles(np.array(polls.query_ms)),
            "plan": plan,
        },
        "queue": {
            "depth_mean": round(float(np.mean([r[1] for r in in_window])), 1)
            if in_window
            else None,
            "depth_max": max((r[1] for r in in_window), default=None),
            "depth_slope_last_third_per_s": None if depth_slope is None else round(depth_slope, 2),
            "outstanding_max": max((r[3] - r[5] for r in in_window), default=None),
            "outstanding_slope_last_third_per_s": None
            if outstanding_slope is None
            else round(outstanding_slope, 2),
            "backlog_slope_limit_per_s": round(limit, 2),
            "backlog": backlog,
        },
        "drain_after_last_publish_s": round(drained_at - measure_to, 2),
        "window_s": round(wall, 2),
        "cpu_s": {k: round(v, 2) for k, v in seconds.items()},
        "cpu_ms_per_chunk": {
            **{k: round(v * per_chunk, 3) for k, v in seconds.items()},
            "all": round(total_cpu * per_chunk, 3),
        },
        "cpu_window_s": round(cpu_wall, 2),
        "cpu_window_chunks": chunks_in_window,
        "cores_busy": round(total_cpu / cpu_wall, 2),
        "machine_cores_busy": round(busy / cpu_wall, 2),
        "machine_busy_share": round(busy / available, 3) if available else None,
        "other_cpu_s": {k: round(v, 2) for k, v in cpu.other_seconds().items() if v >= 0.05},
        "target": f"p99 < {TARGET_P99_MS:g} ms at {args.rate:g} chunks/s and no backlog",
        "target_met": bool(p99 < TARGET_P99_MS and not backlog and records.refused == 0),
        "rate_kept": bool(achieved >= 0.98 * args.rate),
        "serve_exit_status": exit_status,
        "timeline": {
            "columns": ["t_s", "queue_ready", "consumers", "sent", "confirmed", "visible"],
            "rows": timeline.rows,
        },
        "per_second": per_second(records, t0),
    }


def per_second(records: Records, t0: float) -> list[dict[str, Any]]:
    """For each second of publishing: chunks sent, and their latency p50/p99/max."""
    out = []
    second = np.floor(records.sent - t0)
    latency = (records.visible - records.confirmed) * 1000
    for s in np.unique(second[~np.isnan(second)]):
        values = latency[(second == s) & ~np.isnan(latency)]
        out.append(
            {
                "s": int(s),
                "sent": int(np.sum(second == s)),
                "visible": len(values),
                "p50_ms": round(float(np.percentile(values, 50)), 1) if len(values) else None,
                "p99_ms": round(float(np.percentile(values, 99)), 1) if len(values) else None,
                "max_ms": round(float(values.max()), 1) if len(values) else None,
            }
        )
    return out


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def show(r: dict[str, Any]) -> None:
    pub, q = r["publish"], r["queue"]
    print(
        f"\n{r['measured_chunks']} chunks after the warm-up, published at "
        f"{pub['achieved_per_s']:.1f}/s (target {pub['target_per_s']:g}; late p99 "
        f"{pub['late_ms']['p99']} ms, max {pub['late_ms']['max']} ms); confirm p50 "
        f"{pub['confirm_ms']['p50']} ms, p99 {pub['confirm_ms']['p99']} ms"
    )
    print(f"  {'ms':<28}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for label, key in (
        ("confirm -> visible", "latency_ms"),
        ("  confirm -> received", "queued_ms"),
        ("  received -> visible", "pipeline_ms"),
    ):
        v = r[key]
        print(f"  {label:<28}" + "".join(f"{cell(v[p]):>9}" for p in ("p50", "p90", "p99", "max")))
    print(
        f"  visibility polled every {r['poll']['period_ms']} ms (gap p99 "
        f"{r['poll']['gap_ms']['p99']} ms, query p99 {r['poll']['query_ms']['p99']} ms); "
        f"{r['not_visible']} chunks not visible, {r['refused']} refused"
    )
    print(
        f"  queue ready: mean {q['depth_mean']}, max {q['depth_max']}, slope over the last "
        f"third {q['depth_slope_last_third_per_s']}/s (outstanding max {q['outstanding_max']}, "
        f"slope {q['outstanding_slope_last_third_per_s']}/s): "
        + ("BACKLOG builds" if q["backlog"] else "no backlog")
        + f"; drained {r['drain_after_last_publish_s']} s after the last publish"
    )
    ms = r["cpu_ms_per_chunk"]
    print(
        "  CPU ms per chunk: "
        + ", ".join(f"{k} {ms[k]:.2f}" for k in (*FAMILIES, "all"))
        + f" (postgres of this db {ms['postgres_this_db']:.2f}); cores busy "
        f"{r['cores_busy']:.2f}, machine {r['machine_cores_busy']:.2f}"
    )
    others = list(r["other_cpu_s"].items())[:4]
    if others:
        print("  other CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in others))
    met = "met" if r["target_met"] else "NOT met"
    print(f"target {r['target']}: {met}")
    if not r["rate_kept"]:
        print("warning: the publisher fell short of the rate: the figures are not at that load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300, help="chunks per second")
    parser.add_argument("--sensors", type=int, default=300)
    parser.add_argument("--duration", type=float, default=60, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5, help="seconds at rate, not counted")
    parser.add_argument("--roles", default="ingest", help="SOUNDSTREAM_ROLES of serve")
    parser.add_argument("--prime", type=int, default=50, help="chunks to see stored first")
    parser.add_argument("--poll-ms", type=float, default=20, help="visibility poll period")
    parser.add_argument("--depth-every", type=float, default=0.5, help="queue depth period, s")
    parser.add_argument("--drain-timeout", type=float, default=60, help="seconds after the end")
    args = parser.parse_args()
    try:
        result = anyio.run(bench, args)
    except KeyboardInterrupt:
        sys.exit("interrupted (serve stopped, database and queues dropped)")
    show(result)
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "clock_ticks_per_s": TICK,
        **result,
    }
    out = write_result("freshness", document)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
