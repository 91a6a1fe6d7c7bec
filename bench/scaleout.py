"""Scale-out on one box: one replica with two workers against two with one each.

    .venv/bin/python bench/scaleout.py [--sensors 60] [--seconds 60] [--runs 3]
                                       [--timeout 600]

Each drain: a fresh database and fresh AMQP names; a backlog of ``sensors x seconds``
chunks of 1 s of 16 kHz s16le mono (32,000 bytes, 30 frames each) is published
pre-encoded with publisher confirms while no consumer runs; then it is drained by

- (a) one ``soundstream serve`` with ``SOUNDSTREAM_WORKERS=2``, or
- (b) two ``soundstream serve`` processes with ``SOUNDSTREAM_WORKERS=1`` each, sharing
  the database and the queue.

Replicas run role ingest only, each on its own ephemeral HTTP port (port 0), with
default settings otherwise (``SOUNDSTREAM_*`` variables of the environment pass
through). The two alternate, ``--runs`` times each (a first in odd runs, b in even).

The drain window starts at the first poll that sees a committed chunk with every
replica's consumer attached to the queue (passive queue.declare consumer_count), so a
replica that starts later does not count against (b), and ends when every chunk is
committed; ``SELECT count(*) FROM chunks`` is polled every 50 ms and chunks/s counts
the chunks committed inside the window. CPU as ``bench/endtoend.py`` counts it: the
replicas' main processes, their children (pool workers), postgres (less the bench's
own backend) and RabbitMQ, per chunk. Each replica's stderr (JSON log lines at
``BENCH_LOG_LEVEL``, default warning) is kept and counted: lines naming a deadlock or
a serialization failure (``deadlock``, ``40P01``, ``serializ``, ``40001``), and all
warning/error lines by event; the database's own ``pg_stat_database.deadlocks`` and
``xact_rollback`` are read after the replicas stop. Every drain checks that all
chunks and frames are stored once and nothing was dead-lettered, and gives up if a
replica exits or nothing is committed for 60 s.

Prints each drain, then medians, the ratio b/a of median chunks/s and whether the
target (b/a >= 0.95) is met, and writes everything to
``bench/results/scaleout-<UTC time>.json``. Needs the local PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import orjson
from aiormq.abc import AbstractChannel
from anyio.abc import Process
from endtoend import (
    FAMILIES,
    FRAMES_PER_CHUNK,
    TICK,
    Cpu,
    Stat,
    cells_of_cores,
    drain_options,
    median,
    median_of_known,
)
from memory import (
    Plan,
    Target,
    descendants,
    fresh,
    message_count,
    new_target,
    queue_backlog,
    serve_env,
    stop,
    write_result,
)

RESULTS = Path(__file__).parent / "results"
POLL_S = 0.05
SAMPLE_S = 0.25
TARGET_RATIO = 0.95
STALL_S = 60.0  # give up when nothing is committed for this long


@dataclass(frozen=True)
class Layout:
    name: str
    replicas: int
    workers: int

    def describe(self) -> str:
        return f"{self.replicas} replica(s) x SOUNDSTREAM_WORKERS={self.workers}"


LAYOUTS = (Layout("a", 1, 2), Layout("b", 2, 1))
CONFLICT = re.compile(r"deadlock|40P01|serializ|40001", re.IGNORECASE)


@dataclass
class FleetCpu(Cpu):
    """``Cpu`` with every replica's main process under "main" and their
    descendants under "children"."""

    roots: tuple[int, ...] = ()

    def classify(self, table: dict[int, Stat]) -> dict[int, str]:
        found = super().classify(table)
        parents = {p: st.ppid for p, st in table.items()}
        for root in self.roots:
            if root in table:
                found[root] = "main"
                found |= dict.fromkeys(descendants(parents, [root]), "children")
        return found


# -- replicas ------------------------------------------------------------------------


@dataclass
class Replica:
    process: Process
    stderr: Path


@contextlib.asynccontextmanager
async def fleet(target: Target, layout: Layout, logs: Path) -> AsyncIterator[list[Replica]]:
    """``layout.replicas`` serve processes; all get SIGTERM at the end, at once."""
    env = {
        **serve_env(target.database, target.names),
        "SOUNDSTREAM_WORKERS": str(layout.workers),
    }
    replicas: list[Replica] = []
    files = []
    try:
        for i in range(layout.replicas):
            path = logs / f"{target.tag}-{layout.name}-{i}.stderr"
            files.append(path.open("wb"))
            process = await anyio.open_process(
                [sys.executable, "-m", "soundstream", "serve"],
                env=env,
                stdout=None,
                stderr=files[-1],
            )
            replicas.append(Replica(process, path))
        yield replicas
    finally:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for replica in replicas:
                    tg.start_soon(stop, replica.process, target.settings.drain_timeout_s + 10)
            for replica in replicas:
                await replica.process.aclose()
            for file in files:
                file.close()


def read_log(path: Path) -> dict[str, Any]:
    """Conflict lines, and warning-or-worse lines counted by event."""
    conflicts: list[str] = []
    events: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        if CONFLICT.search(line):
            conflicts.append(line[:300])
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                events["(not JSON)"] = events.get("(not JSON)", 0) + 1
            continue
        if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
            name = f"{entry.get('level')}: {entry.get('event')}"
            events[name] = events.get(name, 0) + 1
    return {"conflict_lines": len(conflicts), "first_conflicts": conflicts[:3], "events": events}


# -- one drain -----------------------------------------------------------------------


@dataclass
class Window:
    launched: float
    first: float = 0.0  # monotonic: the window's start
    c0: int = 0  # chunks committed then
    last: float = 0.0  # every chunk committed
    attached: float | None = None  # every consumer attached
    committed: float | None = None  # the first commit seen


async def watch(
    conn: asyncpg.Connection,
    channel: AbstractChannel,
    queue: str,
    replicas: list[Replica],
    *,
    cpu: FleetCpu,
    total: int,
) -> Window:
    window = Window(time.monotonic())
    started = False
    next_sample = 0.0
    stored, progress = 0, window.launched
    while True:
        before, stored = stored, int(await conn.fetchval("SELECT count(*) FROM chunks"))
        now = time.monotonic()
        if stored > before:
            progress = now
        elif now - progress > STALL_S:
            raise TimeoutError(f"no chunk committed for {STALL_S:.0f} s: {stored} of {total}")
        if not started:
            declared = await channel.queue_declare(queue, passive=True)
            if window.attached is None and (declared.consumer_count or 0) >= len(replicas):
                window.attached = now
            if stored and window.committed is None:
                window.committed = now
            if window.attached is not None and stored:
                cpu.sample(now, stored)  # the baseline
                started, window.first, window.c0 = True, now, stored
                next_sample = now + SAMPLE_S
        if stored >= total:
            if not started:
                raise SystemExit("the backlog was committed before every replica attached")
            cpu.end(now, stored)
            window.last = now
            return window
        for replica in replicas:
            if replica.process.returncode is not None:
                raise RuntimeError(f"a replica exited with {replica.process.returncode}")
        if started and now >= next_sample:
            cpu.sample(now, stored)
            next_sample = now + SAMPLE_S
        await anyio.sleep(POLL_S)


async def drain_once(layout: Layout, plan: Plan, timeout_s: float, logs: Path) -> dict[str, Any]:
    target = new_target("scale")
    async with fresh(target) as channel:
        published = await queue_backlog(plan, target, channel)
        conn = await asyncpg.connect(target.database)
        try:
            own_backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            async with fleet(target, layout, logs) as replicas:
                roots = tuple(r.process.pid for r in replicas)
                cpu = FleetCpu(roots[0], {own_backend}, target.tag, roots=roots)
                with anyio.fail_after(timeout_s):
                    window = await watch(
                        conn, channel, target.settings.queue, replicas, cpu=cpu, total=plan.chunks
                    )
            exits = [r.process.returncode for r in replicas]
            chunks = int(await conn.fetchval("SELECT count(*) FROM chunks"))
            frames = int(await conn.fetchval("SELECT count(*) FROM frames"))
            stats = await conn.fetchrow(
                "SELECT deadlocks, xact_rollback, conflicts FROM pg_stat_database "
                "WHERE datname = $1",
                target.tag,
            )
        finally:
            await conn.close()
        dead = await message_count(channel, target.settings.dead_queue)
    if chunks != plan.chunks or frames != plan.chunks * FRAMES_PER_CHUNK or dead:
        raise RuntimeError(f"{layout.name}: {chunks} chunks, {frames} frames, {dead} dead")
    counted = plan.chunks - window.c0
    wall = window.last - window.first
    if counted <= 0 or wall <= 0:
        raise SystemExit("the backlog was committed at once: use more --seconds")
    replica_logs = [read_log(r.stderr) for r in replicas]
    return {
        "layout": layout.name,
        "describe": layout.describe(),
        "chunks": plan.chunks,
        "frames": frames,
        **published,
        "first_commit_after_s": round((window.committed or window.first) - window.launched, 2),
        "all_attached_after_s": round((window.attached or window.first) - window.launched, 2),
        "window_s": round(wall, 3),
        "chunks_before_window": window.c0,
        "chunks_in_window": counted,
        "chunks_per_s": round(counted / wall, 1),
        **cpu.report(counted, wall, backlog=plan.chunks, other_min_s=0.05),
        "conflict_lines": sum(log["conflict_lines"] for log in replica_logs),
        "replica_logs": replica_logs,
        "pg_stat_database": dict(stats) if stats else None,
        "exit_status": exits,
    }


# -- results -------------------------------------------------------------------------


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layout in LAYOUTS:
        runs = [r for r in results if r["layout"] == layout.name]
        out[layout.name] = {
            "describe": layout.describe(),
            "runs": len(runs),
            "chunks_per_s": median(runs, "chunks_per_s"),
            "cpu_ms_per_chunk": {
                k: median(runs, "cpu_ms_per_chunk", k)
                for k in (*FAMILIES, "all", "postgres_this_db")
            },
            "cores_busy": median(runs, "cores_busy"),
            "steady_cores_busy": median_of_known(runs, "steady_cores_busy"),
            "machine_cores_busy": median(runs, "machine_cores_busy"),
            "conflict_lines": sum(r["conflict_lines"] for r in runs),
            "pg_deadlocks": sum((r["pg_stat_database"] or {}).get("deadlocks") or 0 for r in runs),
        }
    ratio = out["b"]["chunks_per_s"] / out["a"]["chunks_per_s"]
    out["ratio_b_over_a"] = round(ratio, 3)
    pairs = list(
        zip(
            [r for r in results if r["layout"] == "a"],
            [r for r in results if r["layout"] == "b"],
            strict=False,
        )
    )
    out["ratio_per_run"] = [round(b["chunks_per_s"] / a["chunks_per_s"], 3) for a, b in pairs]
    out["target"] = f"b/a >= {TARGET_RATIO}"
    out["target_met"] = ratio >= TARGET_RATIO
    return out


def show_run(i: int, r: dict[str, Any]) -> None:
    ms = r["cpu_ms_per_chunk"]
    print(
        f"run {i} {r['layout']} ({r['describe']}): {r['chunks_in_window']} chunks in "
        f"{r['window_s']:.2f} s = {r['chunks_per_s']:.0f} chunks/s; CPU ms/chunk "
        + " ".join(f"{k}={ms[k]:.2f}" for k in (*FAMILIES, "all"))
        + f"; cores busy {r['cores_busy']:.2f} (steady {r['steady_cores_busy']}, machine "
        + f"{r['machine_cores_busy']:.2f}); "
        f"{r['conflict_lines']} conflict lines, pg deadlocks "
        f"{(r['pg_stat_database'] or {}).get('deadlocks')}",
        flush=True,
    )
    events: dict[str, int] = {}
    for log in r["replica_logs"]:
        for name, count in log["events"].items():
            events[name] = events.get(name, 0) + count
    if events:
        print("        log: " + ", ".join(f"{k} x{v}" for k, v in events.items()), flush=True)
    others = list(r["other_cpu_s"].items())[:4]
    if others:
        print("        other CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in others), flush=True)


def show(summary: Mapping[str, Any]) -> None:
    head = ["layout", "chunks/s", *FAMILIES, "all", "cores", "steady", "machine", "conflicts"]
    print("\nmedians; CPU ms per chunk: main, children, postgres, rabbitmq, all")
    print("".join(f"{h:>10}" for h in head))
    for layout in LAYOUTS:
        s = summary[layout.name]
        cells = [
            layout.name,
            f"{s['chunks_per_s']:.0f}",
            *(f"{s['cpu_ms_per_chunk'][k]:.2f}" for k in (*FAMILIES, "all")),
            *cells_of_cores(s),
            str(s["conflict_lines"]),
        ]
        print("".join(f"{c:>10}" for c in cells))
    for layout in LAYOUTS:
        print(f"  {layout.name}: {layout.describe()}")
    met = "met" if summary["target_met"] else "NOT met"
    print(
        f"ratio b/a of median chunks/s: {summary['ratio_b_over_a']:.3f} (per run "
        f"{summary['ratio_per_run']}); target {summary['target']}: {met}"
    )


def main() -> None:
    args, plan = drain_options(__doc__, "scale", seconds=60)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as logs:
        try:
            for i in range(1, args.runs + 1):
                for layout in LAYOUTS if i % 2 else LAYOUTS[::-1]:
                    results.append(anyio.run(drain_once, layout, plan, args.timeout, Path(logs)))
                    show_run(i, results[-1])
        except KeyboardInterrupt:
            sys.exit("interrupted (replicas stopped, database and queues dropped)")
    summary = summarize(results)
    show(summary)
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "clock_ticks_per_s": TICK,
        "backlog": plan.describe(),
        "summary": summary,
        "runs": results,
    }
    out = write_result("scaleout", document)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
