"""Live view delay: from a chunk's commit to its Server-Sent Event at a client.

    .venv/bin/python bench/live.py [--sensors 50] [--watch 50] [--duration 30] [--warmup 5]

A fresh database and fresh AMQP names; one ``soundstream serve`` (ingest and api,
default settings otherwise; ``SOUNDSTREAM_*`` variables of the environment pass
through). ``--sensors`` simulated sensors publish 1 s chunks in real time
(``soundstream simulate --realtime``, in this process); once every sensor has a
chunk stored, this process opens ``GET /v1/sensors/{id}/live`` for ``--watch`` of
them (one HTTP connection each) and LISTENs on the announcement channel itself.

The delay of a chunk is the moment its event was parsed here (wall clock) minus its
announcement's stamp: the database clock when the writer's transaction ran its last
statement, the ``pg_notify``, just before COMMIT (``store.announce``). Same machine,
same clock. So it holds the commit itself, the notification's delivery to the API
replica, the replica's read of the chunk's frames, the JSON, the HTTP write and this
client's parsing. For comparison the bench reports the same for the announcement
reaching its own LISTEN connection (the floor: commit plus delivery). Chunks of the
first ``--warmup`` seconds are not counted. Every announced chunk of a watched
sensor must arrive as an event, once: the bench reports any that did not.

Prints the figures and writes ``bench/results/live-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any

import anyio
import asyncpg
import httpx
import numpy as np
import orjson
from memory import fresh, new_target, serve_env, stop, write_result

from soundstream.sim.simulate import SimulateOptions, simulate
from soundstream.store import announce

PREFIX = "live"
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def now_us() -> int:
    return time.time_ns() // 1000


class Records:
    def __init__(self) -> None:
        self.stamps: dict[tuple[str, int], int] = {}  # announcement stamp, us
        self.heard: dict[tuple[str, int], int] = {}  # announcement at our LISTEN, us
        self.events: dict[tuple[str, int], int] = {}  # event parsed, us
        self.repeated = 0

    def announced(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        at = now_us()
        parsed = announce.parse(payload)
        for sensor, ranges in parsed.ranges.items():
            for first, last in ranges:
                for seq in range(first, last + 1):
                    self.stamps[(sensor, seq)] = parsed.stamp_us
                    self.heard[(sensor, seq)] = at


async def watch(base: str, sensor: str, records: Records) -> None:
    async with (
        httpx.AsyncClient(base_url=base, timeout=None) as client,
        client.stream("GET", f"/v1/sensors/{sensor}/live", params={"fields": "rms"}) as answer,
    ):
        answer.raise_for_status()
        event = ""
        async for line in answer.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "chunk":
                at = now_us()
                seq = orjson.loads(line[6:])["seq"]
                if (sensor, seq) in records.events:
                    records.repeated += 1
                records.events.setdefault((sensor, seq), at)


async def wait_ready(base: str, process: Any) -> None:
    with anyio.fail_after(READY_TIMEOUT_S):
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"serve exited with {process.returncode}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.2)


async def wait_sensors(base: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        while True:
            if len((await client.get("/v1/sensors")).json()["sensors"]) >= count:
                return
            await anyio.sleep(0.2)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(("p50", "p90", "p99", "max"))
    array = np.asarray(values)
    return {
        "p50": float(np.percentile(array, 50)),
        "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    target = new_target("live", SOUNDSTREAM_ROLES="ingest,api", SOUNDSTREAM_HTTP_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    records = Records()
    ids = [f"{PREFIX}-{i:03d}" for i in range(args.sensors)]
    watched = ids[: args.watch]
    async with fresh(target) as _channel:
        env = {**serve_env(target.database, target.names), "SOUNDSTREAM_ROLES": "ingest,api"}
        env["SOUNDSTREAM_HTTP_PORT"] = str(port)
        process = await anyio.open_process(
            [sys.executable, "-m", "soundstream", "serve"], env=env, stdout=None, stderr=None
        )
        listener = await asyncpg.connect(target.database)
        try:
            await wait_ready(base, process)
            await listener.add_listener(announce.CHANNEL, records.announced)
            seconds = args.warmup + args.duration + 3
            options = SimulateOptions(
                sensors=args.sensors, seconds=seconds, realtime=True, sensor_prefix=PREFIX,
                progress=False,
            )  # fmt: skip
            async with anyio.create_task_group() as tg:
                tg.start_soon(simulate, target.settings, options)
                await wait_sensors(base, args.sensors)
                for sensor in watched:
                    tg.start_soon(watch, base, sensor, records)
                opened = now_us()
                print(
                    f"{args.sensors} sensors publishing, {len(watched)} streams open; "
                    f"measuring {args.duration:g} s after {args.warmup:g} s",
                    flush=True,
                )
                await anyio.sleep(args.warmup + args.duration)
                measured_until = now_us()
                await anyio.sleep(2.0)  # what was committed by then arrives
                tg.cancel_scope.cancel()
        finally:
            await listener.close()
            await stop(process, 20)
    start = opened + int(args.warmup * 1e6)
    counted = [
        key
        for key, stamp in records.stamps.items()
        if key[0] in watched and start <= stamp <= measured_until
    ]
    arrived = [k for k in counted if k in records.events]
    delays = [(records.events[k] - records.stamps[k]) / 1000 for k in arrived]
    floor = [(records.heard[k] - records.stamps[k]) / 1000 for k in counted]
    missing = [k for k in counted if k not in records.events]
    return {
        "sensors": args.sensors,
        "watched": len(watched),
        "duration_s": args.duration,
        "chunks": len(counted),
        "events_ms": percentiles(delays),
        "listen_ms": percentiles(floor),
        "missing": len(missing),
        "repeated": records.repeated,
    }


def show(result: dict[str, Any]) -> None:
    def row(name: str, figures: dict[str, float | None]) -> str:
        cells = [f"{figures[p]:7.1f}" if figures[p] is not None else "      -" for p in figures]
        return f"{name:<32}" + " ".join(cells)

    print(
        f"{result['sensors']} sensors, {result['watched']} streams, {result['chunks']} chunks "
        f"measured, {result['missing']} missing, {result['repeated']} repeated"
    )
    print(f"{'ms after the commit':<32}{'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    print(row("event at the SSE client", result["events_ms"]))
    print(row("announcement at a LISTEN", result["listen_ms"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--watch", type=int, default=50, help="sensors streamed")
    parser.add_argument("--duration", type=float, default=30, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5, help="seconds not counted")
    args = parser.parse_args()
    result = anyio.run(bench, args)
    show(result)
    print(f"written to {write_result('live', result)}")


if __name__ == "__main__":
    main()
