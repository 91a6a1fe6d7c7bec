"""The read path: ``soundstream serve --role api`` against a bare per-frame baseline.

    .venv/bin/python bench/readpath.py [--sensors 4] [--seconds 600] [--concurrency 16]
                                       [--duration 10] [--warmup 2] [--runs 2]
                                       [--windows 2000] [--check 20] [--seed 1]

Fill: a fresh database and fresh AMQP names; ``sensors x seconds`` chunks of 1 s of
16 kHz s16le mono (30 frames each with the default n_fft/hop), every sensor starting
at the same minute boundary (so that the audio ends a minute or two before now), are
published pre-encoded with publisher confirms and drained by one ``soundstream serve``
(role ingest, default settings), which then gets SIGTERM (the bench gives up if serve
exits or commits nothing for 60 s). Then the frames are copied into the baseline's
plain per-frame table, ``CREATE TABLE bare_frames AS SELECT sensor_id, ts, rms, zcr,
centroid FROM frames`` with ``PRIMARY KEY (sensor_id, ts)``, and the database is
VACUUM ANALYZEd.

Two servers run side by side on that database, each one process:

- ours: ``soundstream serve`` with ``SOUNDSTREAM_ROLES=api`` (its own HTTP port; every
  other setting at its default or from the environment, except a rate limit, which
  is switched off with ``SOUNDSTREAM_RATE_LIMIT=0`` where the settings have one),
  asked ``GET /v1/sensors/{id}/features?start=&end=&fields=rms,zcr,centroid``;
- bare: ``bench/bare.py`` (starlette + asyncpg + orjson under uvicorn, the query a
  user would write on ``bare_frames``, a pool as large as ours), asked
  ``GET /features?sensor_id=&start=&end=``.

Every request asks for one random minute-aligned 1-minute window of one random
sensor inside the stored range (1,800 frames, so both answer their first 1,000); the
windows come from a seeded generator and both servers get the same sequence, from
its start, in each phase. Before the load, ``--check`` windows are fetched from both
and their answers compared: frame count, every ts, and rms/zcr/centroid (float32).

Load: a closed loop of ``--concurrency`` keep-alive HTTP/1.1 connections (raw
asyncio streams in this process, no JSON parsing: status line, headers,
Content-Length body), each sending its next request as soon as the last answer is
in. A phase is ``--warmup`` s unmeasured, then ``--duration`` s measured: requests/s
counts answers completed inside the window; latency is send to last byte, of those
answers. Phases alternate, ``--runs`` rounds (ours first in odd rounds, bare first in
even). CPU is utime+stime from /proc at the window's start and end: the server
process (and any children), the backends of this database (``postgres`` processes
whose title names it), all ``postgres`` processes, and this process (the client);
"machine" is /proc/stat's busy share of both cores.

Prints a table per run and of medians, the ratio ours/bare of median requests/s and
whether the target (ours >= 2x bare) is met, and writes everything to
``bench/results/readpath-<UTC time>.json``. Drops its database and AMQP names at the
end. Needs the local PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import numpy as np
import orjson
from aiormq.abc import AbstractChannel
from anyio.abc import Process
from endtoend import FRAMES_PER_CHUNK, TICK, Cpu, median, one_second_16k
from memory import (
    Plan,
    Target,
    fresh,
    message_count,
    new_target,
    publish,
    serve_env,
    stop,
    write_result,
)

from soundstream import config

RESULTS = Path(__file__).parent / "results"
BARE = Path(__file__).parent / "bare.py"
SYSTEMS = ("ours", "bare")
FIELDS = ("rms", "zcr", "centroid")
HOST = "127.0.0.1"
LIMIT = 1000  # frames per answer: the API's default, the bare query's LIMIT
TARGET_RATIO = 2.0
STARTUP_S = 60.0
STALL_S = 60.0


# -- a cheap HTTP/1.1 client -----------------------------------------------------------


class Http:
    """One keep-alive connection; ``get`` sends a pre-encoded request and reads the
    answer's status and body (Content-Length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Http:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        return cls(reader, writer)

    async def get(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            return status, await self.reader.readexactly(int(head[at + 17 : end]))
        if b"\r\ntransfer-encoding: chunked" not in lower:
            raise ValueError(f"an answer without a length: {head[:200]!r}")
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readuntil(b"\r\n")  # no trailers
        return status, b"".join(parts)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def request_bytes(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()


async def get_once(port: int, path: str) -> tuple[int, bytes]:
    http = await Http.open(port)
    try:
        return await http.get(request_bytes(port, path))
    finally:
        await http.close()


# -- windows -------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    sensor_id: str
    start: str  # RFC 3339, minute-aligned
    end: str

    def path(self, system: str) -> str:
        if system == "ours":
            return (
                f"/v1/sensors/{self.sensor_id}/features?start={self.start}&end={self.end}"
                f"&fields={','.join(FIELDS)}"
            )
        return f"/features?sensor_id={self.sensor_id}&start={self.start}&end={self.end}"


def rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def windows(sensor_ids: Sequence[str], t0_s: int, minutes: int, n: int, seed: int) -> list[Window]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        minute = rng.randrange(minutes)
        start = t0_s + 60 * minute
        out.append(Window(rng.choice(sensor_ids), rfc3339(start), rfc3339(start + 60)))
    return out


# -- servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    system: str
    port: int
    process: Process


def ours_env(target: Target, port: int) -> dict[str, str]:
    return {
        **serve_env(target.database, target.names),
        "SOUNDSTREAM_ROLES": "api",
        "SOUNDSTREAM_HTTP_PORT": str(port),
        "SOUNDSTREAM_RATE_LIMIT": "0",  # ignored by settings that have no rate limit
    }


@contextlib.asynccontextmanager
async def running(system: str, target: Target, probe: str) -> AsyncIterator[Server]:
    """A server process, answering ``probe`` with 200 before it is handed out."""
    port = free_port()
    if system == "ours":
        argv = [sys.executable, "-m", "soundstream", "serve"]
        env = ours_env(target, port)
    else:
        pool_size = config.load(ours_env(target, port)).db_pool_size
        argv = [
            sys.executable,
            str(BARE),
            f"--database={target.database}",
            f"--port={port}",
            f"--pool-size={pool_size}",
        ]
        env = dict(os.environ)
    process = await anyio.open_process(argv, env=env, stdout=None, stderr=None)
    try:
        await wait_answering(system, process, port, probe)
        yield Server(system, port, process)
    finally:
        with anyio.CancelScope(shield=True):
            await stop(process, target.settings.drain_timeout_s + 10)
            await process.aclose()


async def wait_answering(system: str, process: Process, port: int, path: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    last = "no answer"
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"{system} exited with status {process.returncode}")
        try:
            status, body = await get_once(port, path)
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        await anyio.sleep(0.2)
    raise TimeoutError(f"{system} did not answer {path} within {STARTUP_S:.0f} s: {last}")


# -- checking that both answer the same ----------------------------------------------


def parse_frames(body: bytes) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = orjson.loads(body)["frames"]
    return frames


async def compare(servers: dict[str, Server], sample: Sequence[Window]) -> dict[str, Any]:
    mismatches: list[dict[str, Any]] = []
    counts: list[int] = []
    for window in sample:
        answers = {}
        for system, server in servers.items():
            status, body = await get_once(server.port, window.path(system))
            if status != 200:
                raise RuntimeError(f"{system} answered {status} to {window}: {body[:300]!r}")
            answers[system] = parse_frames(body)
        ours, bare = answers["ours"], answers["bare"]
        counts.append(len(ours))
        problem = difference(ours, bare)
        if problem:
            mismatches.append({"window": vars(window), "problem": problem})
    return {
        "windows": len(sample),
        "frames_per_answer": sorted(set(counts)),
        "mismatches": len(mismatches),
        "first_mismatches": mismatches[:5],
    }


def difference(ours: list[dict[str, Any]], bare: list[dict[str, Any]]) -> str | None:
    if len(ours) != len(bare):
        return f"{len(ours)} frames against {len(bare)}"
    for i, (a, b) in enumerate(zip(ours, bare, strict=True)):
        if datetime.fromisoformat(a["ts"]) != datetime.fromisoformat(b["ts"]):
            return f"frame {i}: ts {a['ts']} against {b['ts']}"
        for name in FIELDS:
            # bare prints the float32 as a double, ours as the shortest float32 decimal
            if not math.isclose(a[name], b[name], rel_tol=1e-6, abs_tol=1e-12):
                return f"frame {i}: {name} {a[name]} against {b[name]}"
    return None


# -- load ----------------------------------------------------------------------------


@dataclass
class Load:
    requests: list[bytes]
    next: int = 0
    measuring: bool = False
    stopping: bool = False
    latencies: list[float] = field(default_factory=list)  # seconds, answers in the window
    statuses: dict[int, int] = field(default_factory=dict)
    body_bytes: int = 0
    errors: int = 0
    first_error: str | None = None


async def client(port: int, load: Load) -> None:
    http = await Http.open(port)
    try:
        while not load.stopping:
            request = load.requests[load.next % len(load.requests)]
            load.next += 1
            sent = time.perf_counter()
            try:
                status, body = await http.get(request)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                load.errors += 1
                load.first_error = load.first_error or repr(exc)
                await http.close()
                http = await Http.open(port)
                continue
            if load.measuring:
                load.latencies.append(time.perf_counter() - sent)
                load.statuses[status] = load.statuses.get(status, 0) + 1
                load.body_bytes += len(body)
    finally:
        await http.close()


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def phase(
    server: Server, peer: Server, plan: list[Window], args: argparse.Namespace, database: str
) -> dict[str, Any]:
    load = Load([request_bytes(server.port, w.path(server.system)) for w in plan])
    cpu = Cpu(server.process.pid, set(), database)
    async with anyio.create_task_group() as tg:
        for _ in range(args.concurrency):
            tg.start_soon(client, server.port, load)
        await anyio.sleep(args.warmup)
        cpu.sample()
        client0 = own_cpu_s()
        started = time.perf_counter()
        load.measuring = True
        await anyio.sleep(args.duration)
        load.measuring = False
        wall = time.perf_counter() - started
        cpu.end()
        client_s = own_cpu_s() - client0
        load.stopping = True
        tg.cancel_scope.deadline = anyio.current_time() + 30  # a server that hangs
    if server.process.returncode is not None:
        raise RuntimeError(f"{server.system} exited with status {server.process.returncode}")
    n = len(load.latencies)
    ms = np.array(load.latencies) * 1000 if n else np.zeros(1)
    seconds = cpu.seconds()
    busy, available = cpu.machine_busy_s()
    server_s = seconds["main"] + seconds["children"]
    per = 1000 / n if n else math.nan
    return {
        "system": server.system,
        "window_s": round(wall, 3),
        "requests": n,
        "requests_per_s": round(n / wall, 1),
        "ok": load.statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "errors": load.errors,
        "first_error": load.first_error,
        "body_kb_mean": round(load.body_bytes / n / 1024, 1) if n else None,
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p90": round(float(np.percentile(ms, 90)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
            "max": round(float(ms.max()), 2),
            "mean": round(float(ms.mean()), 2),
        },
        "cpu_s": {
            "server": round(server_s, 3),
            "postgres_this_db": round(seconds["postgres_this_db"], 3),
            "postgres_all": round(seconds["postgres"], 3),
            "client": round(client_s, 3),
        },
        "cpu_ms_per_request": {
            "server": round(server_s * per, 3),
            "postgres": round(seconds["postgres_this_db"] * per, 3),
            "server_and_postgres": round((server_s + seconds["postgres_this_db"]) * per, 3),
            "postgres_all": round(seconds["postgres"] * per, 3),
            "client": round(client_s * per, 3),
        },
        "machine_cores_busy": round(busy / wall, 2),
        "machine_busy_share": round(busy / available, 3) if available else None,
        "idle_peer_server_cpu_s": round(peer_seconds(cpu, peer.process.pid), 3),
        "other_cpu_s": {k: round(v, 2) for k, v in cpu.other_seconds().items() if v >= 0.05},
    }


def peer_seconds(cpu: Cpu, pid: int) -> float:
    """CPU seconds the other, idle server process used in the window."""
    _, first, last = cpu.others.get(pid, ("", 0, 0))
    return (last - first) / TICK


# -- fill ----------------------------------------------------------------------------


async def fill(
    target: Target, channel: AbstractChannel, plan: Plan, t0_s: int, timeout_s: float
) -> float:
    """Publish the plan, let one ingest replica drain it, stop it; return seconds."""
    started = time.monotonic()
    messages = plan.messages(target.tag, t0_s * 10**9)
    await publish(channel, target.settings.audio_exchange, messages, plan.window)
    process = await anyio.open_process(
        [sys.executable, "-m", "soundstream", "serve"],
        env=serve_env(target.database, target.names),
        stdout=None,
        stderr=None,
    )
    try:
        with anyio.fail_after(timeout_s):
            await wait_filled(target, channel, process, plan.chunks)
    finally:
        with anyio.CancelScope(shield=True):
            await stop(process, target.settings.drain_timeout_s + 10)
            await process.aclose()
    return time.monotonic() - started


async def wait_filled(
    target: Target, channel: AbstractChannel, process: Process, total: int
) -> None:
    """Until every chunk is committed; fails if serve exits, a chunk is dead-lettered,
    or nothing is committed for ``STALL_S``."""
    conn = await asyncpg.connect(target.database)
    try:
        stored, progress = 0, time.monotonic()
        while stored < total:
            await anyio.sleep(0.25)
            if process.returncode is not None:
                raise RuntimeError(f"serve exited with status {process.returncode}")
            now_stored = int(await conn.fetchval("SELECT count(*) FROM chunks"))
            if now_stored > stored:
                stored, progress = now_stored, time.monotonic()
            elif time.monotonic() - progress > STALL_S:
                queued = await message_count(channel, target.settings.queue)
                raise TimeoutError(
                    f"no chunk committed for {STALL_S:.0f} s: {stored} of {total} stored, "
                    f"{queued} ready in the queue"
                )
            if await message_count(channel, target.settings.dead_queue):
                raise RuntimeError("chunks were dead-lettered: the bench published bad ones")
    finally:
        await conn.close()


async def make_bare(database: str, chunks: int) -> dict[str, int]:
    conn = await asyncpg.connect(database)
    try:
        stored = int(await conn.fetchval("SELECT count(*) FROM chunks"))
        frames = int(await conn.fetchval("SELECT count(*) FROM frames"))
        if stored != chunks or frames != chunks * FRAMES_PER_CHUNK:
            raise RuntimeError(f"{stored} chunks and {frames} frames stored of {chunks}")
        await conn.execute(
            "CREATE TABLE bare_frames AS SELECT sensor_id, ts, rms, zcr, centroid FROM frames"
        )
        await conn.execute("ALTER TABLE bare_frames ADD PRIMARY KEY (sensor_id, ts)")
        await conn.execute("VACUUM ANALYZE")
        bare = int(await conn.fetchval("SELECT count(*) FROM bare_frames"))
    finally:
        await conn.close()
    return {"chunks": stored, "frames": frames, "bare_frames": bare}


# -- one bench -----------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    target = new_target("read")
    shape = one_second_16k()
    plan = Plan("read", args.sensors * args.seconds, args.sensors, (shape,))
    # A minute boundary, so that the stored audio ends a minute or two before now.
    t0_s = (int(time.time()) - args.seconds - 120) // 60 * 60
    sensor_ids = [f"{target.tag}-read-{i:03d}" for i in range(args.sensors)]
    sequence = windows(sensor_ids, t0_s, args.seconds // 60, args.windows, args.seed)
    async with fresh(target) as channel:
        print(f"filling: {plan.describe()}", flush=True)
        fill_s = await fill(target, channel, plan, t0_s, args.timeout)
        stored = await make_bare(target.database, plan.chunks)
        print(f"filled in {fill_s:.1f} s: {stored}", flush=True)
        async with contextlib.AsyncExitStack() as stack:
            servers = {
                "ours": await stack.enter_async_context(running("ours", target, "/readyz")),
                "bare": await stack.enter_async_context(
                    running("bare", target, sequence[0].path("bare"))
                ),
            }
            rng = random.Random(args.seed + 1)
            check = await compare(servers, rng.sample(sequence, min(args.check, len(sequence))))
            print(
                f"check: {check['windows']} windows, frames per answer "
                f"{check['frames_per_answer']}, {check['mismatches']} differ",
                flush=True,
            )
            for mismatch in check["first_mismatches"]:
                print(f"  {mismatch}", flush=True)
            runs = []
            for i in range(1, args.runs + 1):
                for system in SYSTEMS if i % 2 else SYSTEMS[::-1]:
                    peer = servers["bare" if system == "ours" else "ours"]
                    result = await phase(servers[system], peer, sequence, args, target.tag)
                    result["round"] = i
                    runs.append(result)
                    show_run(result)
    return {"fill_s": round(fill_s, 1), "stored": stored, "check": check, "runs": runs}


# -- results -------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for system in SYSTEMS:
        mine = [r for r in runs if r["system"] == system]
        out[system] = {
            "runs": len(mine),
            "requests_per_s": median(mine, "requests_per_s"),
            "latency_ms": {k: median(mine, "latency_ms", k) for k in ("p50", "p99")},
            "cpu_ms_per_request": {
                k: median(mine, "cpu_ms_per_request", k)
                for k in ("server", "postgres", "server_and_postgres", "client")
            },
            "machine_cores_busy": median(mine, "machine_cores_busy"),
            "errors": sum(r["errors"] for r in mine),
            "not_ok": sum(r["requests"] - r["ok"] for r in mine),
        }
    ratio = out["ours"]["requests_per_s"] / out["bare"]["requests_per_s"]
    out["ratio_ours_over_bare"] = round(ratio, 2)
    rounds = sorted({r["round"] for r in runs})
    out["ratio_per_round"] = [
        round(
            next(r for r in runs if r["round"] == i and r["system"] == "ours")["requests_per_s"]
            / next(r for r in runs if r["round"] == i and r["system"] == "bare")["requests_per_s"],
            2,
        )
        for i in rounds
    ]
    out["target"] = f"ours >= {TARGET_RATIO:g}x bare requests/s"
    out["target_met"] = ratio >= TARGET_RATIO
    return out


def show_run(r: dict[str, Any]) -> None:
    lat, ms = r["latency_ms"], r["cpu_ms_per_request"]
    print(
        f"round {r['round']} {r['system']:>4}: {r['requests']} answers in {r['window_s']:.1f} s "
        f"= {r['requests_per_s']:.0f}/s; p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms; "
        f"CPU ms/req server {ms['server']:.2f}, postgres {ms['postgres']:.2f}, "
        f"client {ms['client']:.2f}; machine {r['machine_cores_busy']:.2f} cores"
        + (f"; {r['errors']} errors ({r['first_error']})" if r["errors"] else "")
        + (f"; statuses {r['statuses']}" if r["ok"] != r["requests"] else ""),
        flush=True,
    )
    others = list(r["other_cpu_s"].items())[:4]
    if others:
        print("        other CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in others), flush=True)


def show(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nmedians over {args.runs} rounds; {args.concurrency} connections, "
        f"{args.duration:g} s each; CPU ms per request"
    )
    head = ["system", "req/s", "p50 ms", "p99 ms", "server", "postgres", "srv+pg", "client"]
    print("".join(f"{h:>10}" for h in head))
    for system in SYSTEMS:
        s = summary[system]
        ms = s["cpu_ms_per_request"]
        cells = [
            system,
            f"{s['requests_per_s']:.0f}",
            f"{s['latency_ms']['p50']:.1f}",
            f"{s['latency_ms']['p99']:.1f}",
            f"{ms['server']:.2f}",
            f"{ms['postgres']:.2f}",
            f"{ms['server_and_postgres']:.2f}",
            f"{ms['client']:.2f}",
        ]
        print("".join(f"{c:>10}" for c in cells))
    met = "met" if summary["target_met"] else "NOT met"
    print(
        f"ratio ours/bare of median requests/s: {summary['ratio_ours_over_bare']:.2f} "
        f"(per round {summary['ratio_per_round']}); target {summary['target']}: {met}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=600, help="1 s chunks per sensor")
    parser.add_argument("--concurrency", type=int, default=16, help="connections")
    parser.add_argument("--duration", type=float, default=10, help="measured seconds a phase")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds first")
    parser.add_argument("--runs", type=int, default=2, help="rounds (one phase each)")
    parser.add_argument("--windows", type=int, default=2000, help="length of the sequence")
    parser.add_argument("--check", type=int, default=20, help="windows compared")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the fill")
    args = parser.parse_args()
    if args.seconds < 60:
        parser.error("--seconds must be at least 60 (windows are whole minutes)")
    try:
        result = anyio.run(bench, args)
    except KeyboardInterrupt:
        sys.exit("interrupted (servers stopped, database and queues dropped)")
    summary = summarize(result["runs"])
    show(summary, args)
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "clock_ticks_per_s": TICK,
        "summary": summary,
        **result,
    }
    out = write_result("readpath", document)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
