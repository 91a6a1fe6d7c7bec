"""End-to-end drain of one replica against the consumer a user would write first.

    .venv/bin/python bench/endtoend.py [--sensors 60] [--seconds 10] [--runs 3]
                                       [--timeout 600]

Each drain: a fresh database and fresh AMQP names; a backlog of ``sensors x seconds``
chunks of 1 s of 16 kHz s16le mono (32,000 bytes, 30 frames each) is published
pre-encoded with publisher confirms while no consumer runs; then one consumer drains
it: ``soundstream serve`` (role ingest, default settings) or ``bench/naive.py``. The
two alternate, ``--runs`` times each (ours first in odd runs, naive first in even).

The drain window runs from the first commit the bench sees to the moment every chunk
is committed (the summed ``sensors.chunks`` and ``sensor_deltas.chunks`` polled every
50 ms; cheap, as the first has one row per sensor and the second is folded every few
seconds; the naive consumer updates ``sensors`` directly); chunks/s counts the chunks
committed inside it. CPU is
utime+stime of /proc/<pid>/stat, sampled at the start and end of the window and
every 0.25 s in between (a process that exits keeps its last value; one that appears
counts from 0), summed per family: the consumer's main process, its descendants
(pool workers), every ``postgres`` process except the bench's own polling backend,
and RabbitMQ (``beam.smp`` and its descendants). "cores busy" is the families' CPU
seconds over the window's wall seconds; "steady" the same between the samples where
10% and 90% of the backlog were committed (the drain at full flow, without the
pipeline emptying at its end); "machine busy" the same from /proc/stat (all
processes, the bench itself and anyone else's work included).

Prints a table of medians over the runs and the ratio ours/naive, and writes all of
it to ``bench/results/endtoend-<UTC time>.json``. Needs the local PostgreSQL and
RabbitMQ.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from anyio.abc import Process
from memory import (
    Plan,
    Shape,
    descendants,
    fresh,
    make_shape,
    message_count,
    new_target,
    queue_backlog,
    serve_env,
    stop,
    write_result,
)

RESULTS = Path(__file__).parent / "results"
NAIVE = Path(__file__).parent / "naive.py"
SYSTEMS = ("ours", "naive")
# Chunks committed: the sensor summaries plus the deltas not folded into them yet.
STORED = """
SELECT (SELECT coalesce(sum(chunks), 0) FROM sensors)
     + (SELECT coalesce(sum(chunks), 0) FROM sensor_deltas)
"""
FAMILIES = ("main", "children", "postgres", "rabbitmq")
TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05  # committed-chunk polling
SAMPLE_S = 0.25  # /proc sampling in between
SAMPLE_RATE = 16000
FRAMES_PER_CHUNK = 30  # 1 + (16000 - 1024) // 512 with the default n_fft and hop


# -- /proc ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stat:
    comm: str
    ppid: int
    ticks: int  # utime + stime


def snapshot() -> dict[int, Stat]:
    table: dict[int, Stat] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read().decode()
        except OSError:
            continue
        head, _, tail = raw.rpartition(")")
        fields = tail.split()  # fields[0] is field 3 (state)
        table[int(entry.name)] = Stat(
            head.split("(", 1)[1], int(fields[1]), int(fields[11]) + int(fields[12])
        )
    return table


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


@dataclass
class Cpu:
    """Ticks per pid over the drain window, each pid filed under a family."""

    root: int
    exclude: set[int]
    database: str  # its backends' process titles name it
    base: dict[int, int] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)
    family: dict[int, str] = field(default_factory=dict)
    started: bool = False
    machine: list[tuple[int, int]] = field(default_factory=list)
    # Every other process, to see what else ran: pid -> (comm, first ticks, last ticks)
    others: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    this_db: set[int] = field(default_factory=set)  # postgres processes of the database
    # (monotonic time, chunks committed, the families' ticks) at every sample
    trace: list[tuple[float, int, int]] = field(default_factory=list)

    def classify(self, table: dict[int, Stat]) -> dict[int, str]:
        found = {self.root: "main"}
        found |= {
            pid: "children"
            for pid in descendants({p: st.ppid for p, st in table.items()}, [self.root])
        }
        beams = {pid for pid, s in table.items() if s.comm == "beam.smp"}
        for beam in beams:
            found |= {
                pid: "rabbitmq"
                for pid in descendants({p: st.ppid for p, st in table.items()}, [beam]) | {beam}
            }
        found |= {
            pid: "postgres"
            for pid, s in table.items()
            if s.comm == "postgres" and pid not in self.exclude
        }
        return found

    def sample(self, now: float = 0.0, stored: int = 0) -> None:
        table = snapshot()
        kinds = self.classify(table)
        for pid, kind in kinds.items():
            if pid not in self.family and kind == "postgres" and self.serves_database(pid):
                self.this_db.add(pid)
            self.family.setdefault(pid, kind)
            if not self.started:
                self.base[pid] = table[pid].ticks
            self.last[pid] = table[pid].ticks
        for pid, stat in table.items():
            if pid not in kinds:
                first = self.others.get(pid, (stat.comm, 0 if self.started else stat.ticks, 0))[1]
                self.others[pid] = (stat.comm, first, stat.ticks)
        if not self.started:
            self.machine.append(machine_ticks())
        self.started = True
        used = sum(ticks - self.base.get(pid, 0) for pid, ticks in self.last.items())
        self.trace.append((now, stored, used))

    def end(self, now: float = 0.0, stored: int = 0) -> None:
        self.sample(now, stored)
        self.machine.append(machine_ticks())

    def steady_cores_busy(self, total: int) -> float | None:
        """Cores busy between the samples where 10% and 90% of the backlog were
        committed: the drain at full flow, without the pipeline filling at its start
        or emptying at its end (None if too few samples lie in between)."""
        start = next((t for t in self.trace if t[1] >= total // 10), None)
        end = next((t for t in reversed(self.trace) if t[1] <= total * 9 // 10), None)
        if start is None or end is None or end[0] - start[0] < 1.0:
            return None
        return round((end[2] - start[2]) / TICK / (end[0] - start[0]), 2)

    def serves_database(self, pid: int) -> bool:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return f" {self.database} ".encode() in title

    def seconds(self) -> dict[str, float]:
        """CPU seconds per family, and of those of postgres the part of the backends
        (and autovacuum workers) of this database: other work may use the server."""
        out = dict.fromkeys((*FAMILIES, "postgres_this_db"), 0.0)
        for pid, ticks in self.last.items():
            used = (ticks - self.base.get(pid, 0)) / TICK
            out[self.family[pid]] += used
            if pid in self.this_db:
                out["postgres_this_db"] += used
        return out

    def other_seconds(self) -> dict[str, float]:
        """CPU seconds of every other process over the window, per comm (the bench
        itself as "bench"), largest first."""
        by_comm: dict[str, float] = {}
        for pid, (comm, first, last) in self.others.items():
            name = "bench" if pid == os.getpid() else comm
            by_comm[name] = by_comm.get(name, 0.0) + (last - first) / TICK
        return dict(sorted(by_comm.items(), key=lambda kv: -kv[1]))

    def machine_busy_s(self) -> tuple[float, float]:
        """(busy CPU seconds, CPU seconds available) over the window, all CPUs."""
        (b0, t0), (b1, t1) = self.machine[0], self.machine[-1]
        return (b1 - b0) / TICK, (t1 - t0) / TICK

    def report(
        self, chunks: int, wall_s: float, *, backlog: int = 0, other_min_s: float = 0.01
    ) -> dict[str, Any]:
        """The window's CPU: per family, per chunk, cores busy, and everyone else's."""
        seconds = self.seconds()
        used = sum(seconds[k] for k in FAMILIES)
        busy, available = self.machine_busy_s()
        return {
            "cpu_s": {k: round(v, 2) for k, v in seconds.items()},
            "cpu_ms_per_chunk": {
                **{k: round(1000 * v / chunks, 3) for k, v in seconds.items()},
                "all": round(1000 * used / chunks, 3),
            },
            "cores_busy": round(used / wall_s, 2),
            "steady_cores_busy": self.steady_cores_busy(backlog) if backlog else None,
            "machine_cores_busy": round(busy / wall_s, 2),
            "machine_busy_share": round(busy / available, 3) if available else None,
            "other_cpu_s": {
                k: round(v, 2) for k, v in self.other_seconds().items() if v >= other_min_s
            },
            "pids": {kind: sum(1 for f in self.family.values() if f == kind) for kind in FAMILIES},
        }


# -- one drain -----------------------------------------------------------------------


def command(system: str) -> list[str]:
    if system == "ours":
        return [sys.executable, "-m", "soundstream", "serve"]
    return [sys.executable, str(NAIVE)]


PG_BASE = os.environ.get(
    "SOUNDSTREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
).rsplit("/", 1)[0]


async def drain_once(system: str, plan: Plan, timeout_s: float) -> dict[str, Any]:
    target = new_target("e2e")
    async with fresh(target) as channel:
        published = await queue_backlog(plan, target, channel)
        conn = await asyncpg.connect(target.database)
        try:
            own_backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            process = await anyio.open_process(
                command(system),
                env=serve_env(target.database, target.names),
                stdout=None,
                stderr=None,
            )
            try:
                launched = time.monotonic()
                cpu = Cpu(process.pid, {own_backend}, target.tag)
                with anyio.fail_after(timeout_s):
                    window = await watch(conn, process, cpu, plan.chunks)
            finally:
                with anyio.CancelScope(shield=True):
                    await stop(process, target.settings.drain_timeout_s + 10)
                    await process.aclose()
            chunks = int(await conn.fetchval("SELECT count(*) FROM chunks"))
            frames = int(await conn.fetchval("SELECT coalesce(sum(n_frames), 0) FROM chunks"))
        finally:
            await conn.close()
        dead = await message_count(channel, target.settings.dead_queue)
    if chunks != plan.chunks or frames != plan.chunks * FRAMES_PER_CHUNK or dead:
        raise RuntimeError(f"{system}: {chunks} chunks, {frames} frames, {dead} dead-lettered")
    first, c0, last = window
    counted = plan.chunks - c0
    wall = last - first
    if counted <= 0 or wall <= 0:
        raise SystemExit(f"{system} committed the whole backlog at once: use more --seconds")
    return {
        "system": system,
        "chunks": plan.chunks,
        "frames": frames,
        **published,
        "startup_s": round(first - launched, 2),
        "window_s": round(wall, 3),
        "chunks_in_window": counted,
        "chunks_per_s": round(counted / wall, 1),
        **cpu.report(counted, wall, backlog=plan.chunks),
        "exit_status": process.returncode,
    }


async def watch(
    conn: asyncpg.Connection, process: Process, cpu: Cpu, total: int
) -> tuple[float, int, float]:
    """(first commit seen, chunks then, every chunk committed), monotonic."""
    first: float | None = None
    c0 = 0
    next_sample = 0.0
    while True:
        stored = int(await conn.fetchval(STORED))
        now = time.monotonic()
        if stored and first is None:
            cpu.sample(now, stored)  # the baseline
            first, c0, next_sample = now, stored, now + SAMPLE_S
        if stored >= total:
            cpu.end(now, stored)
            assert first is not None
            return first, c0, now
        if process.returncode is not None:
            raise RuntimeError(f"the consumer exited with {process.returncode} before the drain")
        if first is not None and now >= next_sample:
            cpu.sample(now, stored)
            next_sample = now + SAMPLE_S
        await anyio.sleep(POLL_S)


def one_second_16k() -> Shape:
    """The chunk the throughput benches send: 1 s of 16 kHz s16le mono (30 frames)."""
    return make_shape(
        "s16le mono 16 kHz",
        sample_rate=SAMPLE_RATE,
        encoding="s16le",
        channels=1,
        body_bytes=2 * SAMPLE_RATE,
        variants=4,
    )


# -- results -------------------------------------------------------------------------


def median_of_known(runs: list[dict[str, Any]], key: str) -> float | None:
    """The median of ``key`` over the runs that have it (not None)."""
    values = [run[key] for run in runs if run.get(key) is not None]
    return float(statistics.median(values)) if values else None


def cells_of_cores(s: dict[str, Any]) -> list[str]:
    """Cores busy, steady and machine, as table cells."""
    steady = s.get("steady_cores_busy")
    return [
        f"{s['cores_busy']:.2f}",
        "-" if steady is None else f"{steady:.2f}",
        f"{s['machine_cores_busy']:.2f}",
    ]


def median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(value)
    return float(statistics.median(values))


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for system in SYSTEMS:
        runs = [r for r in results if r["system"] == system]
        out[system] = {
            "runs": len(runs),
            "chunks_per_s": median(runs, "chunks_per_s"),
            "cpu_ms_per_chunk": {
                k: median(runs, "cpu_ms_per_chunk", k)
                for k in (*FAMILIES, "all", "postgres_this_db")
            },
            "cores_busy": median(runs, "cores_busy"),
            "steady_cores_busy": median_of_known(runs, "steady_cores_busy"),
            "machine_cores_busy": median(runs, "machine_cores_busy"),
        }
    out["ratio_ours_over_naive"] = round(
        out["ours"]["chunks_per_s"] / out["naive"]["chunks_per_s"], 2
    )
    return out


def show(summary: dict[str, Any]) -> None:
    head = ["system", "chunks/s", *FAMILIES, "all", "cores", "steady", "machine"]
    print("\nmedians; CPU ms per chunk: main, children, postgres, rabbitmq, all;")
    print("cores busy: the families' CPU s / wall s (steady: from 10% to 90% of the backlog;")
    print("machine: all of /proc/stat)")
    print("".join(f"{h:>10}" for h in head))
    for system in SYSTEMS:
        s = summary[system]
        cells = [
            system,
            f"{s['chunks_per_s']:.0f}",
            *(f"{s['cpu_ms_per_chunk'][k]:.2f}" for k in (*FAMILIES, "all")),
            *cells_of_cores(s),
        ]
        print("".join(f"{c:>10}" for c in cells))
    print(
        "postgres ms per chunk in this database's backends: "
        + ", ".join(
            f"{s} {summary[s]['cpu_ms_per_chunk']['postgres_this_db']:.2f}" for s in SYSTEMS
        )
    )
    print(f"ratio ours/naive of median chunks/s: {summary['ratio_ours_over_naive']:.2f}")


def show_run(i: int, r: dict[str, Any]) -> None:
    ms = r["cpu_ms_per_chunk"]
    print(
        f"run {i} {r['system']:>5}: {r['chunks_in_window']} chunks in {r['window_s']:.2f} s = "
        f"{r['chunks_per_s']:.0f} chunks/s; CPU ms/chunk "
        + " ".join(f"{k}={ms[k]:.2f}" for k in (*FAMILIES, "all"))
        + f" (postgres of this db {ms['postgres_this_db']:.2f})"
        + f"; cores busy {r['cores_busy']:.2f} (steady {r['steady_cores_busy']}, machine "
        + f"{r['machine_cores_busy']:.2f})",
        flush=True,
    )
    others = list(r["other_cpu_s"].items())[:4]
    if others:
        print("        other CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in others), flush=True)


def drain_options(doc: str | None, name: str, *, seconds: int) -> tuple[argparse.Namespace, Plan]:
    """The options of a backlog drain (sensors, seconds, runs, timeout) and its plan:
    ``sensors x seconds`` chunks of ``one_second_16k``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=60)
    parser.add_argument("--seconds", type=int, default=seconds, help="1 s chunks per sensor")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per drain")
    args = parser.parse_args()
    plan = Plan(name, args.sensors * args.seconds, args.sensors, (one_second_16k(),))
    return args, plan


def main() -> None:
    args, plan = drain_options(__doc__, "e2e", seconds=10)
    results = []
    for i in range(1, args.runs + 1):
        for system in SYSTEMS if i % 2 else SYSTEMS[::-1]:
            results.append(anyio.run(drain_once, system, plan, args.timeout))
            show_run(i, results[-1])
    summary = summarize(results)
    show(summary)
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "clock_ticks_per_s": TICK,
        "backlog": plan.describe(),
        "naive_prefetch": int(os.environ.get("NAIVE_PREFETCH", "100")),
        "summary": summary,
        "runs": results,
    }
    out = write_result("endtoend", document)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
