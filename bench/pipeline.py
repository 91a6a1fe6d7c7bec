"""Drain throughput of one ``soundstream serve`` process over a queued backlog.

    .venv/bin/python bench/pipeline.py [--sensors 50] [--seconds 30] [--runs 3]

Each run: a fresh database and fresh AMQP names; ``simulate`` queues the backlog
(sensors x seconds of 1 s chunks) while no consumer runs; then a ``serve``
process starts and the clock runs from its first committed chunk to its last, so
process start-up is not counted. Prints chunks/s and frames/s per run and their
median, and writes them to ``bench/results/pipeline-<time>.json`` for comparison
with the previous run. Needs the local PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import aiormq
import anyio
import asyncpg
import orjson
from memory import new_target, serve_env

from soundstream import config
from soundstream.ingest.consumer import declare_topology
from soundstream.sim.simulate import SimulateOptions, simulate
from soundstream.store.migrate import migrate

PG = os.environ.get("SOUNDSTREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("SOUNDSTREAM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
RESULTS = Path(__file__).parent / "results"


async def one_run(sensors: int, seconds: float) -> dict[str, float]:
    target = new_target()
    tag, database, names = target.tag, target.database, target.names
    # It only publishes: a loopback host passes the default roles' open-API check.
    settings = config.load({}, amqp_url=AMQP, database_url=database, http_host="127.0.0.1", **names)
    await migrate(database)
    connection = await aiormq.connect(AMQP)
    try:
        await declare_topology(await connection.channel(), settings)
        summary = await simulate(
            settings, SimulateOptions(sensors=sensors, seconds=seconds, progress=False)
        )
        env = serve_env(database, names)
        process = await anyio.open_process(
            [sys.executable, "-m", "soundstream", "serve"], env=env, stdout=None, stderr=None
        )
        async with process:
            try:
                first, last, frames = await _watch(database, summary.chunks)
            finally:
                process.terminate()
                await process.wait()
    finally:
        channel = await connection.channel()
        for queue in (names["queue"], names["dead_queue"]):
            await channel.queue_delete(queue)
        for exchange in (names["audio_exchange"], names["dead_exchange"]):
            await channel.exchange_delete(exchange)
        await connection.close()
        admin = await asyncpg.connect(PG)
        await admin.execute(f'DROP DATABASE IF EXISTS "{tag}" WITH (FORCE)')
        await admin.close()
    elapsed = last - first
    return {
        "chunks": summary.chunks,
        "frames": frames,
        "seconds": elapsed,
        "chunks_per_s": summary.chunks / elapsed,
        "frames_per_s": frames / elapsed,
        "publish_msg_per_s": summary.msg_per_s,
    }


async def _watch(database: str, total: int) -> tuple[float, float, int]:
    """Poll the chunk count; return (time of first commit, time of last, frames)."""
    conn = await asyncpg.connect(database)
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            stored = await conn.fetchval("SELECT count(*) FROM chunks")
            now = time.monotonic()
            if stored and first is None:
                first = now
            if stored >= total:
                assert first is not None
                frames = int(await conn.fetchval("SELECT coalesce(sum(n_frames), 0) FROM chunks"))
                return first, now, frames
            await anyio.sleep(0.05)
        raise TimeoutError("backlog not drained within 600 s")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        result = anyio.run(one_run, args.sensors, args.seconds)
        runs.append(result)
        print(
            f"run {i + 1}: {result['chunks']} chunks, {result['frames']} frames in "
            f"{result['seconds']:.2f} s = {result['chunks_per_s']:.0f} chunks/s, "
            f"{result['frames_per_s']:.0f} frames/s"
        )
    median = statistics.median(r["chunks_per_s"] for r in runs)
    frames_median = statistics.median(r["frames_per_s"] for r in runs)
    print(f"median: {median:.0f} chunks/s, {frames_median:.0f} frames/s (cpus: {os.cpu_count()})")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"pipeline-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_bytes(
        orjson.dumps(
            {"args": vars(args), "runs": runs, "median_chunks_per_s": median},
            option=orjson.OPT_INDENT_2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
