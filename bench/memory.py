"""Peak resident memory of one ``soundstream serve`` replica while it drains a backlog.

    .venv/bin/python bench/memory.py [--small 100000] [--large 300] [--skip-small]
                                     [--skip-large] [--timeout 600]
    SOUNDSTREAM_MAX_HELD_MB=256 .venv/bin/python bench/memory.py   # settings pass through

Two backlogs, each in a fresh database with fresh AMQP names, queued while no
consumer runs and then drained by one ``serve`` subprocess (role ``ingest``):

- small: N chunks of 0.1 s of 8 kHz s16le mono (1,600 bytes, shorter than the default
  n_fft, so no frames: the cost per message), spread over 100 sensors;
- large: N chunks of exactly 8 MiB (the wire limit), alternating s16le mono at 8 kHz
  and f32le stereo at 48 kHz.

A few bodies are encoded once and published directly, with publisher confirms and a
window of publishes in flight. While ``serve`` drains, /proc is sampled every 100 ms:
VmRSS, VmHWM and RssAnon of the main process and of each child (the pool workers,
and multiprocessing's resource tracker), and the summed VmRSS of the RabbitMQ
(beam.smp) and PostgreSQL processes for context (shared memory counts once per
process there, and other work on the machine is included). Once every chunk is
committed, ``serve`` gets SIGTERM. Every ``SOUNDSTREAM_*`` variable of the environment
reaches ``serve`` and the settings the bench reports, except those the bench sets: the
URLs and AMQP names, roles (ingest), the HTTP address (127.0.0.1, any port) and the log
level (``BENCH_LOG_LEVEL``, default warning).

Prints a table per backlog: chunks, seconds (first commit to last), chunks/s, peak RSS
of the main process, of the largest worker and of all workers together, and the
settings that bound memory (effective_prefetch, workers, and max_held_mb and
worker_memory_mb where the settings have them). Writes it all, with a timeline at 1 s
resolution, to ``bench/results/memory-<UTC time>.json``. Needs the local PostgreSQL
and RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq
import anyio
import asyncpg
import numpy as np
import orjson
from aiormq.abc import AbstractChannel
from anyio.abc import Process
from pamqp.commands import Basic

from soundstream import config
from soundstream.config import Settings
from soundstream.core import wire
from soundstream.ingest.consumer import declare_topology
from soundstream.store.migrate import migrate

PG = os.environ.get("SOUNDSTREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("SOUNDSTREAM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
RESULTS = Path(__file__).parent / "results"

SAMPLE_S = 0.1  # /proc sampling period
POLL_S = 0.25  # committed-chunk count polling period
SMALL_SENSORS = 100
LARGE_BODY = 8 * 1024 * 1024  # the largest body the wire format allows
WINDOW_MESSAGES = 1000  # unconfirmed publishes in flight...
WINDOW_BYTES = 64 * 1024 * 1024  # ...and at most this many body bytes
# Settings that bound the memory of a replica; getattr, since some may not exist yet.
BOUNDS = ("workers", "effective_prefetch", "max_held_mb", "worker_memory_mb")
SECRET_MARKS = ("URL", "KEYS", "_FILE")
KIB = 1024


# -- what is published ---------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One PCM format and a few pre-encoded bodies of it, used in turn."""

    label: str
    sample_rate: int
    encoding: str
    channels: int
    frames: int  # samples per channel in one chunk
    bodies: tuple[bytes, ...]

    def start_ns(self, t0: int, seq: int) -> int:
        """Chunk ``seq`` starts where chunk ``seq - 1`` ended."""
        return t0 + seq * self.frames * 10**9 // self.sample_rate


def make_shape(
    label: str, *, sample_rate: int, encoding: str, channels: int, body_bytes: int, variants: int
) -> Shape:
    itemsize = wire.ENCODINGS[encoding].itemsize
    frames, rest = divmod(body_bytes, itemsize * channels)
    assert not rest, f"{body_bytes} bytes is not a whole number of {label} samples"
    rng = np.random.default_rng(len(label) + sample_rate)
    bodies = tuple(
        wire.encode_pcm(rng.uniform(-amplitude, amplitude, (frames, channels)), encoding)
        for amplitude in np.linspace(0.1, 0.9, variants)
    )
    assert all(len(body) == body_bytes for body in bodies)
    return Shape(label, sample_rate, encoding, channels, frames, bodies)


@dataclass(frozen=True)
class Outgoing:
    routing_key: str
    body: bytes
    properties: Basic.Properties


@dataclass(frozen=True)
class Plan:
    """A backlog: ``chunks`` messages, round robin over ``sensors``; sensor i uses shape
    i modulo their number, with consecutive seq and start_ns."""

    name: str
    chunks: int
    sensors: int
    shapes: tuple[Shape, ...]

    @property
    def window(self) -> int:
        largest = max(len(shape.bodies[0]) for shape in self.shapes)
        return max(1, min(WINDOW_MESSAGES, WINDOW_BYTES // largest))

    def describe(self) -> str:
        kinds = ", ".join(f"{len(s.bodies[0]):,} B of {s.label}" for s in self.shapes)
        return f"{self.chunks:,} chunks ({kinds}) from {self.sensors} sensors"

    def messages(self, tag: str, t0: int) -> Iterator[Outgoing]:
        ids = [f"{tag}-{self.name}-{i:03d}" for i in range(self.sensors)]
        for j in range(self.chunks):
            seq, sensor = divmod(j, self.sensors)
            yield outgoing(ids[sensor], seq, self.shapes[sensor % len(self.shapes)], t0)


def outgoing(sensor_id: str, seq: int, shape: Shape, t0: int) -> Outgoing:
    headers = wire.headers_for(
        sensor_id,
        seq,
        shape.start_ns(t0, seq),
        sample_rate=shape.sample_rate,
        encoding=shape.encoding,
        channels=shape.channels,
    )
    properties = Basic.Properties(
        content_type=wire.PCM,
        headers=headers,
        message_id=wire.message_id(sensor_id, seq),
        delivery_mode=2,
    )
    return Outgoing(wire.routing_key(sensor_id), shape.bodies[seq % len(shape.bodies)], properties)


def small_plan(chunks: int) -> Plan:
    shape = make_shape(
        "0.1 s s16le mono 8 kHz",
        sample_rate=8000,
        encoding="s16le",
        channels=1,
        body_bytes=1600,
        variants=4,
    )
    return Plan("small", chunks, SMALL_SENSORS, (shape,))


def large_plan(chunks: int) -> Plan:
    shapes = (
        make_shape(
            "s16le mono 8 kHz",
            sample_rate=8000,
            encoding="s16le",
            channels=1,
            body_bytes=LARGE_BODY,
            variants=1,
        ),
        make_shape(
            "f32le stereo 48 kHz",
            sample_rate=48000,
            encoding="f32le",
            channels=2,
            body_bytes=LARGE_BODY,
            variants=1,
        ),
    )
    return Plan("large", chunks, len(shapes), shapes)


async def publish(
    channel: AbstractChannel, exchange: str, messages: Iterable[Outgoing], window: int
) -> int:
    """Publish ``window`` messages at once, wait for all their confirmations, repeat.
    Returns the body bytes published."""
    iterator, sent = iter(messages), 0
    while batch := list(itertools.islice(iterator, window)):
        confirmations = await asyncio.gather(
            *(
                channel.basic_publish(
                    m.body, exchange=exchange, routing_key=m.routing_key, properties=m.properties
                )
                for m in batch
            )
        )
        refused = sum(not isinstance(c, Basic.Ack) for c in confirmations)
        if refused:
            raise RuntimeError(f"the broker refused {refused} of {len(batch)} publishes")
        sent += sum(len(m.body) for m in batch)
    return sent


async def message_count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.queue_declare(queue, passive=True)
    return int(declared.message_count or 0)


# -- a fresh database and fresh AMQP names -------------------------------------------


@dataclass(frozen=True)
class Target:
    tag: str
    database: str
    names: dict[str, str]
    settings: Settings


def new_target(kind: str = "mem", **env: str) -> Target:
    """A fresh database and AMQP names for one run; ``env`` adds to serve's
    environment (``SOUNDSTREAM_*`` variables)."""
    tag = f"bench_{kind}_{uuid.uuid4().hex[:8]}"
    database = PG.rsplit("/", 1)[0] + "/" + tag
    names = {
        "audio_exchange": f"{tag}.audio",
        "queue": f"{tag}.features",
        "dead_exchange": f"{tag}.dead",
        "dead_queue": f"{tag}.dead",
    }
    # The environment, as ``serve`` reads it, so the reported bounds are its own.
    settings = config.load({**serve_env(database, names), **env})
    return Target(tag, database, names, settings)


def write_result(name: str, document: dict[str, Any]) -> Path:
    """``bench/results/<name>-<UTC time>.json``."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return out


def serve_env(database: str, names: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_URL_FILE", "_KEYS_FILE"))}
    return {
        **env,
        "SOUNDSTREAM_DATABASE_URL": database,
        "SOUNDSTREAM_AMQP_URL": AMQP,
        "SOUNDSTREAM_HTTP_HOST": "127.0.0.1",
        "SOUNDSTREAM_HTTP_PORT": "0",
        "SOUNDSTREAM_ROLES": "ingest",
        "SOUNDSTREAM_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        **{config.variable(k): v for k, v in names.items()},
    }


@contextlib.asynccontextmanager
async def fresh(target: Target) -> AsyncIterator[AbstractChannel]:
    """Schema and topology for ``target``; a confirming channel; all dropped at the end."""
    try:
        await migrate(target.database)
        connection = await aiormq.connect(AMQP)
        try:
            await declare_topology(await connection.channel(), target.settings)
            yield await connection.channel(publisher_confirms=True)
        finally:
            with anyio.CancelScope(shield=True):
                await connection.close()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(60):
            await drop(target)


async def drop(target: Target) -> None:
    """Delete the queues, exchanges and database; a failure of one spares the others."""
    try:
        connection = await aiormq.connect(AMQP)
        try:
            channel = await connection.channel()
            for queue in (target.names["queue"], target.names["dead_queue"]):
                await channel.queue_delete(queue)
            for exchange in (target.names["audio_exchange"], target.names["dead_exchange"]):
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()
    except Exception as exc:
        print(f"warning: AMQP clean-up of {target.tag} failed: {exc!r}", file=sys.stderr)
    try:
        admin = await asyncpg.connect(PG)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{target.tag}" WITH (FORCE)')
        finally:
            await admin.close()
    except Exception as exc:
        print(f"warning: dropping database {target.tag} failed: {exc!r}", file=sys.stderr)


# -- /proc ---------------------------------------------------------------------------


def processes() -> dict[int, tuple[str, int]]:
    """pid -> (comm, ppid) of every process visible now."""
    table: dict[int, tuple[str, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        head, _, tail = stat.rpartition(")")  # comm may hold spaces and parentheses
        table[int(entry.name)] = (head.split("(", 1)[1], int(tail.split()[1]))
    return table


def descendants(parents: Mapping[int, int], roots: Iterable[int]) -> set[int]:
    """Every process below ``roots``, from a pid -> ppid mapping."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def parents_of(table: dict[int, tuple[str, int]]) -> dict[int, int]:
    return {pid: ppid for pid, (_, ppid) in table.items()}


@dataclass(frozen=True)
class Vm:
    """Figures of /proc/<pid>/status, in kB."""

    rss: int
    hwm: int
    anon: int


def vm(pid: int) -> Vm | None:
    """None for a process that is gone or a zombie (which has no memory lines)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return Vm(*(int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM", "RssAnon")))
    except KeyError:
        return None


def role(pid: int, comm: str) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return comm
    if b"spawn_main" in cmdline:
        return "worker"
    if b"resource_tracker" in cmdline:
        return "resource_tracker"
    return comm


def family_kb(pids: Iterable[int]) -> int:
    return sum(v.rss for v in map(vm, pids) if v is not None)


def broker_pids(table: dict[int, tuple[str, int]]) -> set[int]:
    beams = {pid for pid, (comm, _) in table.items() if comm == "beam.smp"}
    return beams | descendants(parents_of(table), beams)


def postgres_pids(table: dict[int, tuple[str, int]]) -> set[int]:
    return {pid for pid, (comm, _) in table.items() if comm == "postgres"}


# -- peaks ---------------------------------------------------------------------------


@dataclass
class Peak:
    rss: int = 0
    hwm: int = 0
    anon: int = 0

    def add(self, v: Vm | Peak) -> None:
        self.rss, self.hwm, self.anon = (
            max(self.rss, v.rss),
            max(self.hwm, v.hwm),
            max(self.anon, v.anon),
        )


@dataclass
class Family:
    """Summed VmRSS of a group of processes: before publishing, when the drain
    starts, and its peak during the drain."""

    idle: int = 0
    start: int | None = None
    peak: int = 0

    def add(self, kb: int) -> None:
        self.start = kb if self.start is None else self.start
        self.peak = max(self.peak, kb)


@dataclass
class Memory:
    """What the samples of one drain found, in kB."""

    main: Peak = field(default_factory=Peak)
    children: dict[int, tuple[str, Peak]] = field(default_factory=dict)
    workers_sum: int = 0  # the largest sum of worker VmRSS in one sample
    broker: Family = field(default_factory=Family)
    postgres: Family = field(default_factory=Family)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)

    def baseline(self) -> None:
        table = processes()
        self.broker.idle = family_kb(broker_pids(table))
        self.postgres.idle = family_kb(postgres_pids(table))

    def sample(self, root: int, t: float) -> None:
        table = processes()
        main = vm(root)
        if main is not None:
            self.main.add(main)
        workers = 0
        for pid in sorted(descendants(parents_of(table), [root])):
            v = vm(pid)
            if v is None:
                continue
            if pid not in self.children:
                self.children[pid] = (role(pid, table[pid][0]), Peak())
            kind, peak = self.children[pid]
            peak.add(v)
            workers += v.rss if kind == "worker" else 0
        self.workers_sum = max(self.workers_sum, workers)
        broker, postgres = family_kb(broker_pids(table)), family_kb(postgres_pids(table))
        self.broker.add(broker)
        self.postgres.add(postgres)
        self.samples.append((t, main.rss if main else 0, workers, broker, postgres))

    def peaks(self, kind: str) -> list[Peak]:
        return [peak for k, peak in self.children.values() if k == kind]

    def timeline(self) -> list[list[float]]:
        """Per second of the drain: the largest main, workers, broker, postgres (MiB)."""
        seconds: dict[int, list[int]] = {}
        for t, *kbs in self.samples:
            bucket = seconds.setdefault(int(t), [0, 0, 0, 0])
            bucket[:] = map(max, bucket, kbs)
        return [[s, *(mib(kb) for kb in kbs)] for s, kbs in sorted(seconds.items())]


def mib(kb: int) -> float:
    return round(kb / KIB, 1)


# -- one drain -----------------------------------------------------------------------


@dataclass
class Drain:
    total: int  # chunks to commit
    started: float = 0.0  # monotonic, when ``serve`` was started
    stored: int = 0
    first: float | None = None  # monotonic, the first commit seen
    last: float | None = None  # monotonic, every chunk committed


@contextlib.asynccontextmanager
async def serving(target: Target) -> AsyncIterator[Process]:
    """A ``serve`` process; SIGTERM at the end, SIGKILL past its drain limit."""
    process = await anyio.open_process(
        [sys.executable, "-m", "soundstream", "serve"],
        env=serve_env(target.database, target.names),
        stdout=None,
        stderr=None,
    )
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            await stop(process, target.settings.drain_timeout_s + 10)
            await process.aclose()


async def stop(process: Process, grace_s: float) -> None:
    if process.returncode is None:
        process.terminate()
    with anyio.move_on_after(grace_s):
        await process.wait()
        return
    print(f"warning: serve did not stop within {grace_s:.0f} s; killing it", file=sys.stderr)
    process.kill()
    await process.wait()


async def watch(
    process: Process, target: Target, channel: AbstractChannel, drain: Drain, memory: Memory
) -> None:
    """Sample memory until every chunk is committed; fail if ``serve`` exits first."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(sample_every, process.pid, memory, drain.started)
        tg.start_soon(fail_on_exit, process)
        await wait_drained(target, channel, drain)
        tg.cancel_scope.cancel()
    memory.sample(process.pid, time.monotonic() - drain.started)  # the final VmHWM


async def sample_every(pid: int, memory: Memory, t0: float) -> None:
    due = time.monotonic()
    while True:
        memory.sample(pid, time.monotonic() - t0)
        due = max(due + SAMPLE_S, time.monotonic())
        await anyio.sleep_until(due)


async def fail_on_exit(process: Process) -> None:
    status = await process.wait()
    raise RuntimeError(f"serve exited with status {status} before the backlog was drained")


async def wait_drained(target: Target, channel: AbstractChannel, drain: Drain) -> None:
    conn = await asyncpg.connect(target.database)
    try:
        while drain.stored < drain.total:
            await anyio.sleep(POLL_S)
            drain.stored = int(await conn.fetchval("SELECT count(*) FROM chunks"))
            if drain.stored and drain.first is None:
                drain.first = time.monotonic()
            dead = await message_count(channel, target.settings.dead_queue)
            if dead:
                raise RuntimeError(
                    f"{dead} chunks were dead-lettered: the bench published bad ones"
                )
        drain.last = time.monotonic()
    finally:
        await conn.close()


async def run_plan(plan: Plan, drain_limit_s: float) -> dict[str, Any]:
    target = new_target()
    async with fresh(target) as channel:
        drain, memory = Drain(plan.chunks), Memory()
        memory.baseline()
        published = await queue_backlog(plan, target, channel)
        async with serving(target) as process:
            drain.started = time.monotonic()
            try:
                with anyio.fail_after(drain_limit_s):
                    await watch(process, target, channel, drain, memory)
            except TimeoutError:
                raise TimeoutError(
                    f"{drain.stored} of {drain.total} chunks committed in {drain_limit_s:.0f} s"
                ) from None
        return report(
            plan,
            target.settings,
            drain,
            memory,
            published=published,
            exit_status=process.returncode,
        )


async def queue_backlog(plan: Plan, target: Target, channel: AbstractChannel) -> dict[str, float]:
    """Publish the backlog and check that all of it is queued; return how fast it went."""
    print(f"{plan.name}: queueing {plan.describe()}", flush=True)
    started = time.perf_counter()
    messages = plan.messages(target.tag, time.time_ns() // 10**9 * 10**9)
    sent = await publish(channel, target.settings.audio_exchange, messages, plan.window)
    publish_s = time.perf_counter() - started
    queued = await message_count(channel, target.settings.queue)
    if queued != plan.chunks:
        raise RuntimeError(f"{queued} of {plan.chunks} chunks are queued")
    print(f"{plan.name}: queued in {publish_s:.1f} s; draining", flush=True)
    return {
        "publish_s": round(publish_s, 2),
        "publish_msg_per_s": round(plan.chunks / publish_s, 1),
        "publish_mb_per_s": round(sent / 1e6 / publish_s, 1),
    }


# -- results -------------------------------------------------------------------------


def bounds(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name, None) for name in BOUNDS}


def report(
    plan: Plan,
    settings: Settings,
    drain: Drain,
    memory: Memory,
    *,
    published: dict[str, float],
    exit_status: int | None,
) -> dict[str, Any]:
    assert drain.first is not None and drain.last is not None
    seconds = drain.last - drain.first
    workers = memory.peaks("worker")
    largest = Peak()  # each figure's maximum over the workers
    for peak in workers:
        largest.add(peak)
    return {
        "backlog": plan.name,
        "describe": plan.describe(),
        "chunks": plan.chunks,
        "body_bytes": sorted({len(s.bodies[0]) for s in plan.shapes}),
        **published,
        "startup_s": round(drain.first - drain.started, 2),
        "seconds": round(seconds, 2),
        "chunks_per_s": round(plan.chunks / seconds, 1) if seconds else None,
        "serve_exit_status": exit_status,
        "settings": bounds(settings),
        "backlog_per_prefetch": round(plan.chunks / settings.effective_prefetch, 2),
        "peak_mib": {
            "main": peak_mib(memory.main),
            "worker_max": peak_mib(largest),
            "workers_sum_rss": mib(memory.workers_sum),
            "workers_seen": len(workers),
            "children": {
                str(pid): {"role": kind, **peak_mib(peak)}
                for pid, (kind, peak) in memory.children.items()
            },
            "rabbitmq_rss": family_mib(memory.broker),
            "postgres_rss": family_mib(memory.postgres),
        },
        "samples": len(memory.samples),
        "timeline_mib": {
            "columns": ["s", "main", "workers", "rabbitmq", "postgres"],
            "rows": memory.timeline(),
        },
    }


def family_mib(family: Family) -> dict[str, float]:
    return {
        "before_publish": mib(family.idle),
        "drain_start": mib(family.start or 0),
        "peak": mib(family.peak),
    }


def peak_mib(peak: Peak) -> dict[str, float]:
    return {"rss": mib(peak.rss), "hwm": mib(peak.hwm), "rss_anon": mib(peak.anon)}


def show(result: dict[str, Any]) -> None:
    peaks, limits = result["peak_mib"], result["settings"]
    rate = result["chunks_per_s"]
    print(f"\n{result['backlog']}: {result['describe']}")
    print(
        f"  {result['chunks']:,} chunks in {result['seconds']:.1f} s (first commit to last) = "
        f"{rate:,.0f} chunks/s; serve up {result['startup_s']:.1f} s before the first, "
        f"exit status {result['serve_exit_status']}"
    )
    print(
        "  bounds: "
        + ", ".join(f"{k}={'-' if v is None else v}" for k, v in limits.items())
        + f" (the backlog is {result['backlog_per_prefetch']}x effective_prefetch)"
    )
    print(f"  {'MiB':<28}{'peak RSS':>10}{'VmHWM':>10}{'RssAnon':>10}")
    row("serve main", peaks["main"])
    row(f"worker, largest of {peaks['workers_seen']}", peaks["worker_max"])
    print(f"  {'workers, summed':<28}{peaks['workers_sum_rss']:>10.1f}")
    for child in peaks["children"].values():
        if child["role"] != "worker":
            row(child["role"], child)
    for name in ("rabbitmq", "postgres"):
        family = peaks[f"{name}_rss"]
        print(
            f"  {name} RSS, summed: {family['before_publish']:.1f} before publishing, "
            f"{family['drain_start']:.1f} at serve start, {family['peak']:.1f} peak"
        )


def row(label: str, peak: dict[str, float]) -> None:
    print(f"  {label:<28}{peak['rss']:>10.1f}{peak['hwm']:>10.1f}{peak['rss_anon']:>10.1f}")


def environment() -> dict[str, str]:
    """The SOUNDSTREAM_* variables the run saw, without URLs, keys or secret files."""
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith(config.PREFIX) and not any(mark in k for mark in SECRET_MARKS)
    }


def write(args: argparse.Namespace, results: list[dict[str, Any]]) -> Path:
    document = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "environment": environment(),
        "backlogs": results,
    }
    out = write_result("memory", document)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000, help="chunks of 1,600 bytes")
    parser.add_argument(
        "--large", type=int, default=300, help="chunks of 8 MiB (more than the default prefetch)"
    )
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per drain")
    args = parser.parse_args()
    plans = []
    if not args.skip_small:
        plans.append(small_plan(args.small))
    if not args.skip_large:
        plans.append(large_plan(args.large))
    results = []
    try:
        for plan in plans:
            results.append(anyio.run(run_plan, plan, args.timeout))
            show(results[-1])
    except KeyboardInterrupt:
        sys.exit("interrupted (the server is stopped, its database and queues dropped)")
    print(f"\nwrote {write(args, results)}")


if __name__ == "__main__":
    main()
