"""The read API: ``soundstream serve --role api`` against bare handlers doing the same work.

    .venv/bin/python bench/readapi.py [--concurrency 16] [--duration 20] [--warmup 2]
                                      [--runs 1] [--windows 2000] [--check 10]
                                      [--scenarios minute,day_1s,parquet_10min]
                                      [--seed 1] [--phase-us 371234] [--keep]
                                      [--database URL]

Fill: a fresh database holding one sensor's day, 2026-01-01 UTC, of 1 s chunks of
16 kHz audio (86,400 chunks x 30 frames, frames 32 ms apart, chunk k starting
``--phase-us`` after second k), in the service's layout: ``chunk_frames`` rows built
with numpy in the stored binary COPY format and copied in (``bench/downsample.py``'s
fill, which checks the layout against ``pgcopy.chunk_row`` byte for byte). The same
2,592,000 frames are then unnested into the baseline's per-frame table,
``bare_frames`` (every feature a column, mel/mfcc as ``real[]``; unlogged, which
changes nothing for reads), with primary key ``(sensor_id, ts)``; VACUUM ANALYZE and
a CHECKPOINT follow, so no write-back runs behind the timings. About a minute. With
``--keep`` the database is left (its URL printed) and ``--database URL`` runs on it
again without filling.

Two servers run side by side, each one process: ours, ``soundstream serve`` with
``SOUNDSTREAM_ROLES=api`` and ``SOUNDSTREAM_RATE_LIMIT=0`` (``bench/readpath.py``'s
start-up), and ``bench/bare_readapi.py`` (starlette + asyncpg + orjson/pyarrow under
uvicorn, a pool as large as ours). Three scenarios, each request a window drawn from
a seeded generator; both servers get the same sequence, from its start, so their
caches see the same windows:

- ``minute``: ``GET /v1/sensors/{id}/features?start=&end=&fields=rms,zcr,centroid``, a
  random minute-aligned minute of the day (1,800 frames; both answer the first
  1,000); bare ``SELECT ts, rms, zcr, centroid ... ORDER BY ts LIMIT 1000`` -> orjson.
- ``day_1s``: ``...?start=S&end=S+1d&resolution=1s&fields=rms,zcr,centroid&limit=10000``,
  S a random whole second with S + 10,000 s inside the day: one JSON page of the
  10,000 buckets [S, S + 10,000 s). Bare gets the same start, end and limit and
  runs ``date_bin('1 second', ts, 'epoch')`` with ``avg()`` and ``count(*)`` over
  ``ts >= S AND ts < S + limit s``, ``GROUP BY ... ORDER BY ... LIMIT 10000`` ->
  orjson.
- ``parquet_10min``: ``...?start=S&end=S+600s&format=parquet`` (every field; ours
  streams it, a row group per 5,000 frames), S a random whole second; bare selects
  every column of the 18,000 frames ``ORDER BY ts`` -> pyarrow table -> Parquet (zstd).

Before the load, ``--check`` windows of each scenario are fetched from both and
compared: the frames (ts and float32 values) for ``minute``, bucket starts, frame
counts and means (to 1e-6) for ``day_1s``, and the decoded Parquet tables (every ts
and every float32 value, mel and mfcc included) for ``parquet_10min``. A scenario
whose check fails (an error answer, or different data) is reported and skipped.

Load and measurement are ``bench/readpath.py``'s: a closed loop of ``--concurrency``
keep-alive connections, ``--warmup`` s unmeasured then ``--duration`` s measured per
phase; requests/s counts answers completed in the window, latency is send to last
byte; CPU from /proc (server, this database's backends, client, other processes).
A scenario has ``--runs`` rounds of one phase per system; the first system
alternates between rounds and between scenarios (ours first in the first scenario's
first round).

Prints each phase, then a table of medians (req/s, p50 and p99 of ours and bare, and
ours/bare of req/s), and writes everything to ``bench/results/readapi-<UTC time>.json``.
Drops its database at the end unless ``--keep``. Needs the local PostgreSQL only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from downsample import FRAMES, PARAMS, SENSOR, T0_US, check_layout, fill
from endtoend import TICK, median
from memory import PG, Target, new_target, stop, write_result
from readpath import (
    FIELDS,
    HOST,
    Server,
    Window,
    compare,
    free_port,
    get_once,
    ours_env,
    phase,
    rfc3339,
    running,
    show_run,
    wait_answering,
    windows,
)

from soundstream import config
from soundstream.core.fields import ARRAY_FIELDS, FEATURE_FIELDS
from soundstream.store.migrate import migrate

BARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bare_readapi.py")
SYSTEMS = ("ours", "bare")
SCENARIOS = ("minute", "day_1s", "parquet_10min")
DAY_S = 86_400
T0_S = T0_US // 1_000_000
BUCKETS = 10_000  # a day_1s page
EXPORT_S = 600  # a parquet_10min window

BARE_TABLE = """
CREATE UNLOGGED TABLE bare_frames AS
SELECT c.sensor_id, f.ts, f.rms, f.zcr, f.centroid, f.bandwidth, f.rolloff, f.flatness,
       f.dominant_hz,
       c.mel[(f.i - 1) * {n_mels} + 1 : f.i * {n_mels}] AS mel,
       c.mfcc[(f.i - 1) * {n_mfcc} + 1 : f.i * {n_mfcc}] AS mfcc
FROM chunk_frames c CROSS JOIN LATERAL unnest(
    c.ts, c.rms, c.zcr, c.centroid, c.bandwidth, c.rolloff, c.flatness, c.dominant_hz
) WITH ORDINALITY AS f(ts, rms, zcr, centroid, bandwidth, rolloff, flatness, dominant_hz, i)
"""


# -- requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class DayPage(Window):
    """A page of 1 s buckets from ``start``; ``end`` is a day later."""

    def path(self, system: str) -> str:
        if system == "ours":
            return (
                f"/v1/sensors/{self.sensor_id}/features?start={self.start}&end={self.end}"
                f"&resolution=1s&fields={','.join(FIELDS)}&limit={BUCKETS}"
            )
        return (
            f"/buckets?sensor_id={self.sensor_id}&start={self.start}&end={self.end}&limit={BUCKETS}"
        )


@dataclass(frozen=True)
class Export(Window):
    """Every field of the range as Parquet."""

    def path(self, system: str) -> str:
        if system == "ours":
            return (
                f"/v1/sensors/{self.sensor_id}/features?start={self.start}&end={self.end}"
                "&format=parquet"
            )
        return f"/parquet?sensor_id={self.sensor_id}&start={self.start}&end={self.end}"


def seconds_windows(
    kind: type[Window], last_start_s: int, length_s: int, n: int, seed: int
) -> list[Window]:
    """``n`` windows of ``length_s`` from random whole seconds in [0, last_start_s]."""
    rng = random.Random(seed)
    out: list[Window] = []
    for _ in range(n):
        start = T0_S + rng.randrange(last_start_s + 1)
        out.append(kind(SENSOR, rfc3339(start), rfc3339(start + length_s)))
    return out


def sequences(n: int, seed: int) -> dict[str, list[Window]]:
    return {
        "minute": windows([SENSOR], T0_S, DAY_S // 60, n, seed),
        "day_1s": seconds_windows(DayPage, DAY_S - BUCKETS, DAY_S, n, seed + 1),
        "parquet_10min": seconds_windows(Export, DAY_S - EXPORT_S, EXPORT_S, n, seed + 2),
    }


# -- checks --------------------------------------------------------------------------


async def answers(servers: dict[str, Server], window: Window) -> dict[str, bytes]:
    out = {}
    for system, server in servers.items():
        status, body = await get_once(server.port, window.path(system))
        if status != 200:
            raise RuntimeError(f"{system} answered {status} to {window}: {body[:300]!r}")
        out[system] = body
    return out


def bucket_difference(ours: list[dict[str, Any]], bare: list[dict[str, Any]]) -> str | None:
    if len(ours) != len(bare):
        return f"{len(ours)} buckets against {len(bare)}"
    for i, (a, b) in enumerate(zip(ours, bare, strict=True)):
        if datetime.fromisoformat(a["ts"]) != datetime.fromisoformat(b["bucket"]):
            return f"bucket {i}: {a['ts']} against {b['bucket']}"
        if a["count"] != b["count"]:
            return f"bucket {i}: {a['count']} frames against {b['count']}"
        for name in FIELDS:
            # ours rounds each mean to float32 once; bare prints avg()'s float8
            if not math.isclose(a[name], b[name], rel_tol=1e-6, abs_tol=1e-12):
                return f"bucket {i}: {name} {a[name]} against {b[name]}"
    return None


def table_difference(ours: pa.Table, bare: pa.Table) -> str | None:
    if ours.column_names != bare.column_names:
        return f"columns {ours.column_names} against {bare.column_names}"
    if ours.num_rows != bare.num_rows:
        return f"{ours.num_rows} rows against {bare.num_rows}"
    for name in ours.column_names:
        a, b = ours.column(name), bare.column(name)
        if name == "ts":
            same = a.cast(pa.int64()).equals(b.cast(pa.int64()))
        elif name in ARRAY_FIELDS:
            flat_a = np.concatenate([c.flatten().to_numpy() for c in a.chunks])
            flat_b = np.concatenate([c.flatten().to_numpy() for c in b.chunks])
            same = np.array_equal(flat_a, flat_b)
        else:
            same = np.array_equal(a.to_numpy(), b.to_numpy())
        if not same:
            return f"column {name} differs"
    return None


async def check(
    scenario: str, servers: dict[str, Server], sample: Sequence[Window]
) -> dict[str, Any]:
    """Both servers' answers to ``sample`` compared; raises on an error answer."""
    if scenario == "minute":
        return await compare(servers, sample)
    mismatches: list[dict[str, Any]] = []
    sizes: dict[str, list[int]] = {system: [] for system in servers}
    rows: list[int] = []
    for window in sample:
        got = await answers(servers, window)
        for system, body in got.items():
            sizes[system].append(len(body))
        if scenario == "day_1s":
            ours, bare = orjson.loads(got["ours"])["frames"], orjson.loads(got["bare"])["buckets"]
            rows.append(len(ours))
            problem = bucket_difference(ours, bare)
        else:
            tables = {s: pq.read_table(io.BytesIO(body)) for s, body in got.items()}
            rows.append(tables["ours"].num_rows)
            problem = table_difference(tables["ours"], tables["bare"])
            if tables["ours"].column_names != ["ts", *FEATURE_FIELDS]:
                problem = problem or f"ours has columns {tables['ours'].column_names}"
        if problem:
            mismatches.append({"window": vars(window), "problem": problem})
    return {
        "windows": len(sample),
        "rows_per_answer": sorted(set(rows)),
        "body_kb_mean": {s: round(sum(v) / len(v) / 1024, 1) for s, v in sizes.items()},
        "mismatches": len(mismatches),
        "first_mismatches": mismatches[:5],
    }


# -- servers -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_bare(target: Target) -> AsyncIterator[Server]:
    port = free_port()
    pool_size = config.load(ours_env(target, port)).db_pool_size
    argv = [
        sys.executable,
        BARE,
        f"--database={target.database}",
        f"--host={HOST}",
        f"--port={port}",
        f"--pool-size={pool_size}",
    ]
    process = await anyio.open_process(argv, env=dict(os.environ), stdout=None, stderr=None)
    try:
        await wait_answering("bare", process, port, "/healthz")
        yield Server("bare", port, process)
    finally:
        with anyio.CancelScope(shield=True):
            await stop(process, target.settings.drain_timeout_s + 10)
            await process.aclose()


# -- fill ----------------------------------------------------------------------------


async def seed(database: str, phase_us: int) -> dict[str, Any]:
    """The day in ``chunk_frames`` and in ``bare_frames``; seconds each step took."""
    check_layout(phase_us)
    await migrate(database)
    took, _ = await fill(database, DAY_S, phase_us)
    conn = await asyncpg.connect(database)
    try:
        started = time.perf_counter()
        await conn.execute(BARE_TABLE.format(n_mels=PARAMS.n_mels, n_mfcc=PARAMS.n_mfcc))
        await conn.execute("ALTER TABLE bare_frames ADD PRIMARY KEY (sensor_id, ts)")
        took["bare_table_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE bare_frames")
        await conn.execute("CHECKPOINT")
        took["bare_vacuum_checkpoint_s"] = time.perf_counter() - started
    finally:
        await conn.close()
    return {k: round(v, 1) for k, v in took.items()}


async def stored(database: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database)
    try:
        out = {
            "chunks": int(await conn.fetchval("SELECT count(*) FROM chunk_frames")),
            "frames": int(await conn.fetchval("SELECT sum(n_frames) FROM chunk_frames")),
            "bare_frames": int(await conn.fetchval("SELECT count(*) FROM bare_frames")),
        }
        for relation in ("chunk_frames_20260101", "bare_frames"):
            size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", relation)
            out[f"{relation}_mb"] = round(int(size) / 2**20)
    finally:
        await conn.close()
    if out["frames"] != DAY_S * FRAMES or out["bare_frames"] != out["frames"]:
        raise RuntimeError(f"the database does not hold the seeded day: {out}")
    return out


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# -- one bench -----------------------------------------------------------------------


def order(round_: int, scenario_index: int) -> tuple[str, ...]:
    return SYSTEMS if (round_ + scenario_index) % 2 else SYSTEMS[::-1]


async def run_scenario(
    scenario: str,
    plan: list[Window],
    *,
    index: int,
    servers: dict[str, Server],
    args: argparse.Namespace,
    database: str,
) -> dict[str, Any]:
    print(f"\n== {scenario}: {plan[0].path('ours')} ...", flush=True)
    rng = random.Random(args.seed + 10 + index)
    try:
        checked = await check(scenario, servers, rng.sample(plan, min(args.check, len(plan))))
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        print(f"check failed, scenario skipped: {exc}", flush=True)
        return {"error": str(exc), "runs": []}
    rows = checked.get("rows_per_answer", checked.get("frames_per_answer"))
    print(
        f"check: {checked['windows']} windows, rows per answer {rows}, "
        f"{checked['mismatches']} differ",
        flush=True,
    )
    for mismatch in checked["first_mismatches"]:
        print(f"  {mismatch}", flush=True)
    if checked["mismatches"]:
        return {"error": "the answers differ", "check": checked, "runs": []}
    runs = []
    for i in range(1, args.runs + 1):
        for system in order(i, index):
            peer = servers["bare" if system == "ours" else "ours"]
            result = await phase(servers[system], peer, plan, args, database)
            result["round"] = i
            runs.append(result)
            show_run(result)
    return {"check": checked, "runs": runs}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    target = new_target("readapi")
    if args.database:
        name = args.database.rsplit("/", 1)[1]
        target = dataclasses.replace(target, tag=name, database=args.database)
    plans = sequences(args.windows, args.seed)
    filled: dict[str, Any] = {}
    try:
        if not args.database:
            print(f"filling {DAY_S:,} chunks of 1 s ({DAY_S * FRAMES:,} frames) twice", flush=True)
            filled = await seed(target.database, args.phase_us)
            print(f"filled: {filled}", flush=True)
        contents = await stored(target.database)
        print(f"stored: {contents}", flush=True)
        results: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            servers = {
                "ours": await stack.enter_async_context(running("ours", target, "/readyz")),
                "bare": await stack.enter_async_context(running_bare(target)),
            }
            for index, scenario in enumerate(args.scenarios):
                results[scenario] = await run_scenario(
                    scenario,
                    plans[scenario],
                    index=index,
                    servers=servers,
                    args=args,
                    database=target.tag,
                )
    finally:
        with anyio.CancelScope(shield=True):
            if args.keep or args.database:
                print(f"database kept: {target.database}", flush=True)
            else:
                await drop_database(target.tag)
    return {"fill_s": filled, "stored": contents, "database": target.tag, "scenarios": results}


# -- results -------------------------------------------------------------------------


def summarize(scenarios: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, result in scenarios.items():
        runs = result["runs"]
        if not runs:
            out[scenario] = {"error": result.get("error")}
            continue
        summary: dict[str, Any] = {}
        for system in SYSTEMS:
            mine = [r for r in runs if r["system"] == system]
            summary[system] = {
                "runs": len(mine),
                "requests_per_s": median(mine, "requests_per_s"),
                "latency_ms": {k: median(mine, "latency_ms", k) for k in ("p50", "p99")},
                "cpu_ms_per_request": {
                    k: median(mine, "cpu_ms_per_request", k)
                    for k in ("server", "postgres", "server_and_postgres", "client")
                },
                "body_kb_mean": median(mine, "body_kb_mean"),
                "machine_cores_busy": median(mine, "machine_cores_busy"),
                "errors": sum(r["errors"] for r in mine),
                "not_ok": sum(r["requests"] - r["ok"] for r in mine),
            }
        ratio = summary["ours"]["requests_per_s"] / summary["bare"]["requests_per_s"]
        summary["ratio_ours_over_bare"] = round(ratio, 2)
        summary["ratio_per_round"] = [
            round(by_round(runs, i, "ours") / by_round(runs, i, "bare"), 2)
            for i in sorted({r["round"] for r in runs})
        ]
        out[scenario] = summary
    return out


def by_round(runs: list[dict[str, Any]], round_: int, system: str) -> float:
    return float(
        next(r for r in runs if r["round"] == round_ and r["system"] == system)["requests_per_s"]
    )


def show(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nmedians over {args.runs} round(s); {args.concurrency} connections, "
        f"{args.duration:g} s measured per phase; latency in ms; CPU ms per request"
    )
    head = ["scenario", "ours r/s", "p50", "p99", "bare r/s", "p50", "p99", "ours/bare"]
    widths = [15, 9, 8, 8, 9, 8, 8, 10]
    print("".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for scenario, s in summary.items():
        if "error" in s:
            print(f"{scenario:>15}  skipped: {s['error']}")
            continue
        cells: list[str] = [scenario]
        for system in SYSTEMS:
            lat = s[system]["latency_ms"]
            cells += [
                f"{s[system]['requests_per_s']:.1f}",
                f"{lat['p50']:.1f}",
                f"{lat['p99']:.1f}",
            ]
        cells.append(f"{s['ratio_ours_over_bare']:.2f}x")
        print("".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print("\nCPU ms per request (server + PostgreSQL backends of the database):")
    for scenario, s in summary.items():
        if "error" in s:
            continue
        parts = []
        for system in SYSTEMS:
            ms = s[system]["cpu_ms_per_request"]
            parts.append(f"{system} {ms['server']:.1f} + {ms['postgres']:.1f}")
        print(f"{scenario:>15}: " + "; ".join(parts))


def scenario_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}; got {text!r}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="connections")
    parser.add_argument("--duration", type=float, default=20, help="measured seconds a phase")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds first")
    parser.add_argument("--runs", type=int, default=1, help="rounds per scenario")
    parser.add_argument("--windows", type=int, default=2000, help="length of each sequence")
    parser.add_argument("--check", type=int, default=10, help="windows compared a scenario")
    parser.add_argument(
        "--scenarios", type=scenario_list, default=list(SCENARIOS), help=",".join(SCENARIOS)
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--phase-us", type=int, default=371_234, help="chunk starts after each whole second"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--database", help="run on a database kept by --keep, without filling")
    args = parser.parse_args()
    if not 0 <= args.phase_us < 1_000_000:
        parser.error("--phase-us must be in [0, 1000000)")
    try:
        result = anyio.run(bench, args)
    except KeyboardInterrupt:
        sys.exit("interrupted (servers stopped, database dropped unless kept)")
    summary = summarize(result["scenarios"])
    show(summary, args)
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "clock_ticks_per_s": TICK,
        "summary": summary,
        **result,
    }
    out = write_result("readapi", document)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
