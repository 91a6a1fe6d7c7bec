"""What the fault tests drive and observe: replicas as real processes, a TCP proxy
that can be cut, the broker's own view of one vhost (``rabbitmqctl``), a publisher
of consecutive chunks, and the rows in PostgreSQL.

Everything waits on an observable condition with a deadline (``wait_until``); no
test sleeps for a fixed time to let something happen.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import aiormq
import anyio
import asyncpg
import httpx
import numpy as np
from pamqp.commands import Basic
from testenv import AMQP_URL, PG_ADMIN_URL

from soundstream.core import wire
from soundstream.core.features import frame_count

T = TypeVar("T")

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
RATE = 16_000
CHUNK_S = 0.5
CHUNK_SAMPLES = int(RATE * CHUNK_S)
N_FFT, HOP = 1024, 512
FRAMES_PER_CHUNK = frame_count(CHUNK_SAMPLES, N_FFT, HOP)  # 14
# Connections the tests open themselves carry this name, so that counting the
# broker's connections and consumers counts only the replicas'.
TEST_CONNECTION = "faults-test"
QUEUE = "soundstream.features"
DEAD_QUEUE = "soundstream.dead"
# Where the real services listen (what a proxy forwards to).
AMQP_PORT = urlsplit(AMQP_URL).port or 5672
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432


# --------------------------------------------------------------------------- waiting


async def wait_until(
    check: Callable[[], Awaitable[T] | T],
    *,
    within: float,
    what: str,
    interval: float = 0.1,
    describe: Callable[[], Awaitable[str] | str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; return that. Fails with the
    last value seen (and what ``describe`` says) once ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        result = check()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            message = f"{what}: not within {within} s (last seen: {last!r})"
            if describe is not None:
                said = describe()
                message += "\n" + (await said if inspect.isawaitable(said) else said)
            raise AssertionError(message)
        await anyio.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- proxy


class Proxy:
    """A TCP forwarder 127.0.0.1:``port`` -> 127.0.0.1:``target`` in its own threads,
    so it keeps forwarding whatever the test's event loop is doing.

    ``sever()`` closes every live connection on both sides at once (each peer sees
    the socket close, as when a network path dies and the kernel says so);
    ``stop_listening()`` refuses new ones until ``listen()``.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.accepted = 0
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def sever(self) -> int:
        """Close every live connection; how many sockets were closed."""
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return len(live)

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live) // 2

    def close(self) -> None:
        self.stop_listening()
        self.sever()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                # Forward each write at once: Nagle plus delayed ACKs would add
                # tens of milliseconds to every round trip of the protocols.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted += 1
                self._live.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(source, sink), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        # One side finished or broke: the whole connection goes, as a dead path would.
        with self._lock:
            owned = source in self._live
            self._live.discard(source)
            self._live.discard(sink)
        if owned:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


# --------------------------------------------------------------------------- broker


async def rabbitmqctl(*args: str, check: bool = True) -> str:
    result = await anyio.run_process(["rabbitmqctl", "-q", *args], check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout.decode()


async def _json(*args: str) -> list[dict[str, Any]]:
    out = await rabbitmqctl(*args, "--formatter", "json")
    return list(json.loads(out)) if out.strip() else []


@dataclass(frozen=True)
class QueueStats:
    ready: int
    unacked: int
    consumers: int
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Connection:
    name: str  # as its client gave it (``?name=`` in the URL), or ""
    pid: str  # the broker's process of this connection: a new connection, a new pid
    state: str


@dataclass(frozen=True)
class ChannelStats:
    connection: str  # the connection's name as its client gave it (or "")
    connection_pid: str
    unacked: int
    consumers: int


@dataclass(frozen=True)
class Footprint:
    """What the replicas hold on the broker: a replica has a fixed number of
    connections per pipeline run (the baseline seen once it is ready), exactly one
    consumer on the queue, on one connection."""

    connections: frozenset[str]  # connection pids
    consumers: int
    consuming: frozenset[str]  # pids of the connections whose channels consume
    stale_channels: int  # channels whose connection is not (or no longer) listed

    def like(self, baseline: Footprint) -> bool:
        """As many connections as ``baseline``, and one consumer on one of them."""
        return (
            len(self.connections) == len(baseline.connections)
            and self.consumers == 1
            and len(self.consuming) == 1
            and self.consuming <= self.connections
            and self.stale_channels == 0
        )


def _connection_name(client_properties: Any) -> str:
    for key, _type, value in client_properties or []:
        if key == "connection_name":
            return str(value)
    return ""


class Broker:
    """One throw-away vhost on the local RabbitMQ, and what the broker says about it."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost

    def url(self, *, port: int | None = None, name: str = TEST_CONNECTION) -> str:
        parts = urlsplit(AMQP_URL)
        netloc = parts.netloc
        if port is not None:
            netloc = f"{netloc.rsplit(':', 1)[0]}:{port}"
        return urlunsplit(
            (parts.scheme, netloc, "/" + quote(self.vhost, safe=""), f"name={name}", "")
        )

    async def create(self) -> None:
        await rabbitmqctl("add_vhost", self.vhost)
        await rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")

    async def delete(self) -> None:
        await rabbitmqctl("delete_vhost", self.vhost, check=False)

    async def queues(self) -> dict[str, QueueStats]:
        """``list_queues``. For quorum queues the counts are refreshed by the broker
        every few seconds, so poll them; ``live_ready`` and ``channels`` are live."""
        rows = await _json(
            "list_queues",
            "-p",
            self.vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "arguments",
        )
        return {
            row["name"]: QueueStats(
                ready=int(row["messages_ready"] or 0),
                unacked=int(row["messages_unacknowledged"] or 0),
                consumers=int(row["consumers"] or 0),
                arguments={key: value for key, _type, value in row.get("arguments") or []},
            )
            for row in rows
        }

    async def connections(self) -> list[Connection]:
        """The replicas' connections to this vhost (the tests' own left out)."""
        # list_connections is not scoped by -p: filter on the vhost column.
        rows = await _json("list_connections", "vhost", "pid", "client_properties", "state")
        found = [
            Connection(_connection_name(row.get("client_properties")), row["pid"], row["state"])
            for row in rows
            if row.get("vhost") == self.vhost
        ]
        return [c for c in found if not c.name.startswith(TEST_CONNECTION)]

    async def consumers(self, queue: str = QUEUE) -> list[dict[str, Any]]:
        """Consumers on ``queue``; the tests never consume from it."""
        rows = await _json("list_consumers", "-p", self.vhost)
        return [row for row in rows if row.get("queue_name") == queue]

    async def channels(self) -> list[ChannelStats]:
        """The replicas' channels in this vhost with their live unacked counts."""
        async with anyio.create_task_group() as tg:
            found: dict[str, list[dict[str, Any]]] = {}

            async def fetch(key: str, *args: str) -> None:
                found[key] = await _json(*args)

            tg.start_soon(fetch, "conn", "list_connections", "pid", "client_properties")
            tg.start_soon(
                fetch,
                "chan",
                "list_channels",
                "connection",
                "vhost",
                "messages_unacknowledged",
                "consumer_count",
            )
        names = {
            row["pid"]: _connection_name(row.get("client_properties")) for row in found["conn"]
        }
        stats = [
            ChannelStats(
                connection=names.get(row["connection"], ""),
                connection_pid=row["connection"],
                unacked=int(row["messages_unacknowledged"] or 0),
                consumers=int(row["consumer_count"] or 0),
            )
            for row in found["chan"]
            if row.get("vhost") == self.vhost
        ]
        return [c for c in stats if not c.connection.startswith(TEST_CONNECTION)]

    async def footprint(self, queue: str = QUEUE) -> Footprint:
        """The replicas' connections and consumers in this vhost, as the broker
        lists them (``list_connections``, ``list_channels``, ``list_consumers``)."""
        connections = await self.connections()
        pids = frozenset(c.pid for c in connections)
        channels = await self.channels()
        return Footprint(
            connections=pids,
            consumers=len(await self.consumers(queue)),
            consuming=frozenset(c.connection_pid for c in channels if c.consumers),
            stale_channels=sum(1 for c in channels if c.connection_pid not in pids),
        )

    async def unacked_by(self, connection: str) -> int:
        return sum(c.unacked for c in await self.channels() if c.connection == connection)

    async def unacked(self) -> int:
        return sum(c.unacked for c in await self.channels())

    async def live_ready(self, queue: str = QUEUE) -> int:
        """Ready messages now (a passive declare asks the queue itself)."""
        connection = await aiormq.connect(self.url(name=f"{TEST_CONNECTION}-peek"))
        try:
            channel = await connection.channel()
            declared = await channel.queue_declare(queue, passive=True)
            return int(declared.message_count or 0)
        finally:
            await connection.close()

    async def outstanding(self, queue: str = QUEUE) -> tuple[int, int]:
        """(ready, unacked) as of now: the queue's ready count and the unacked
        deliveries the replicas' channels hold."""
        return await self.live_ready(queue), await self.unacked()

    async def outstanding_text(self, queue: str = QUEUE) -> str:
        """What the broker says now, for failure messages."""
        return (
            f"{queue}: {await self.live_ready(queue)} ready;"
            f" unacked by channel {await self.channels()};"
            f" connections {await self.connections()};"
            f" consumers {[c.get('channel_pid') for c in await self.consumers(queue)]}"
        )

    async def wait_settled(self, queue: str = QUEUE, *, within: float = 25) -> QueueStats:
        """Until the broker reports ``queue`` empty: nothing ready, nothing unacked,
        both live and in ``list_queues``."""

        async def settled() -> QueueStats | None:
            if await self.outstanding(queue) != (0, 0):
                return None
            stats = (await self.queues()).get(queue)
            return stats if stats and (stats.ready, stats.unacked) == (0, 0) else None

        return await wait_until(settled, within=within, what=f"{queue} empty", interval=0.5)


# --------------------------------------------------------------------------- publisher


def chunk_samples(sensor_index: int, seq: int) -> np.ndarray:
    t = np.arange(CHUNK_SAMPLES) / RATE
    freq = 200.0 + 50.0 * sensor_index + 3.0 * (seq % 97)
    return np.asarray(0.4 * np.sin(2 * np.pi * freq * t), dtype=np.float32)


class NanosecondTimestamp(datetime):
    """A datetime that pamqp encodes as ``time.time_ns()``: an AMQP ``timestamp``
    property in nanoseconds, which aiormq cannot decode (the year is out of range)."""

    def timestamp(self) -> float:
        return float(time.time_ns())


class Publisher:
    """Publishes with publisher confirms (and ``mandatory``: an unroutable message
    fails the test rather than vanishing)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.published = 0

    async def __aenter__(self) -> Publisher:
        self.connection = await aiormq.connect(self.broker.url(name=f"{TEST_CONNECTION}-pub"))
        self.channel = await self.connection.channel(publisher_confirms=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def publish(
        self,
        body: bytes,
        headers: dict[str, Any],
        *,
        message_id: str,
        routing_key: str,
        exchange: str = "soundstream.audio",
        timestamp: Any = None,
    ) -> None:
        assert self.channel is not None
        confirmation = await self.channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            mandatory=True,
            properties=Basic.Properties(
                content_type="audio/pcm",
                message_id=message_id,
                delivery_mode=2,
                headers=headers,
                timestamp=timestamp,
            ),
        )
        assert isinstance(confirmation, Basic.Ack), confirmation
        self.published += 1

    async def chunk(
        self,
        sensor_id: str,
        seq: int,
        *,
        samples: np.ndarray | None = None,
        rate: int = RATE,
        timestamp: Any = None,
    ) -> None:
        index = int.from_bytes(sensor_id.encode()[-2:], "big") % 16
        samples = chunk_samples(index, seq) if samples is None else samples
        start = START_NS + round(seq * CHUNK_S * 1e9)
        await self.publish(
            wire.encode_pcm(samples, "s16le"),
            wire.headers_for(sensor_id, seq, start, sample_rate=rate, encoding="s16le", channels=1),
            message_id=wire.message_id(sensor_id, seq),
            routing_key=wire.routing_key(sensor_id),
            timestamp=timestamp,
        )

    async def chunks(self, sensors: Iterable[str], seqs: Iterable[int], *, group: int = 64) -> int:
        """Consecutive valid chunks, the sensors interleaved; how many."""
        jobs = [(sensor, seq) for seq in seqs for sensor in sensors]
        for start in range(0, len(jobs), group):
            async with anyio.create_task_group() as tg:
                for sensor, seq in jobs[start : start + group]:
                    tg.start_soon(self._chunk, sensor, seq)
        return len(jobs)

    async def _chunk(self, sensor: str, seq: int) -> None:
        await self.chunk(sensor, seq)


# --------------------------------------------------------------------------- database


class Store:
    """What PostgreSQL holds, read over a direct connection of the test's own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None

    async def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def chunks(self) -> int:
        return int(await (await self.conn()).fetchval("SELECT count(*) FROM chunks"))

    async def frames(self) -> int:
        return int(await (await self.conn()).fetchval("SELECT count(*) FROM frames"))

    async def summary(self) -> tuple[int, int]:
        """Chunks and frames as the per-sensor summary counts them: the rows folded
        so far and the deltas not folded yet (as the API reads it)."""
        row = await (await self.conn()).fetchrow(
            "SELECT coalesce(sum(chunks), 0) AS c, coalesce(sum(frames), 0) AS f FROM"
            " (SELECT chunks, frames FROM sensors"
            "  UNION ALL SELECT chunks, frames FROM sensor_deltas) AS parts"
        )
        return int(row["c"]), int(row["f"])

    async def per_sensor(self) -> dict[str, tuple[int, int, int]]:
        """sensor -> (chunks, lowest seq, highest seq)."""
        rows = await (await self.conn()).fetch(
            "SELECT sensor_id, count(*) AS n, min(seq) AS lo, max(seq) AS hi"
            " FROM chunks GROUP BY sensor_id"
        )
        return {r["sensor_id"]: (int(r["n"]), int(r["lo"]), int(r["hi"])) for r in rows}

    async def fail_next_write(self) -> None:
        """Make the next insert into ``chunks`` fail once with an error PostgreSQL
        raises (not a lost connection): a write path that crashes, for real, once.
        The shot counter is a sequence, so the failed transaction's rollback does
        not re-arm it."""
        await (await self.conn()).execute(
            """
            CREATE SEQUENCE faults_shots;
            CREATE FUNCTION faults_fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('faults_shots') = 1 THEN
                    RAISE EXCEPTION 'fault injected by the test';
                END IF;
                RETURN NULL;
            END $$;
            CREATE TRIGGER faults_fail_once BEFORE INSERT ON chunks
                FOR EACH STATEMENT EXECUTE FUNCTION faults_fail_once();
            """
        )

    async def write_failed(self) -> bool:
        """The fault armed by ``fail_next_write`` has gone off."""
        return bool(await (await self.conn()).fetchval("SELECT is_called FROM faults_shots"))

    async def wait_chunks(self, at_least: int, *, within: float) -> int:
        async def enough() -> int:
            n = await self.chunks()
            return n if n >= at_least else 0

        return await wait_until(enough, within=within, what=f"{at_least} chunks stored")

    async def assert_exactly(
        self, sensors: dict[str, int], frames_per_chunk: int = FRAMES_PER_CHUNK
    ) -> None:
        """Every published chunk stored once: ``sensors`` maps sensor -> chunks 0..n-1."""
        total = sum(sensors.values())
        assert await self.chunks() == total
        assert await self.frames() == total * frames_per_chunk
        assert await self.summary() == (total, total * frames_per_chunk)
        assert await self.per_sensor() == {s: (n, 0, n - 1) for s, n in sensors.items()}


class TableLock:
    """``LOCK TABLE chunks IN EXCLUSIVE MODE`` in an open transaction: every write
    to ``chunks`` waits until ``release``, so no batch commits and nothing is acked.

    EXCLUSIVE rather than ACCESS EXCLUSIVE: reads still pass, so a restarted
    pipeline can open its connections (their set-up copies the table's shape)
    and the test can count rows from anywhere."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: asyncpg.Connection | None = None
        self._tx: Any = None

    async def acquire(self) -> None:
        self.conn = await asyncpg.connect(self.url)
        self._tx = self.conn.transaction()
        await self._tx.start()
        await self.conn.execute("LOCK TABLE chunks IN EXCLUSIVE MODE")

    async def chunks(self) -> int:
        assert self.conn is not None
        return int(await self.conn.fetchval("SELECT count(*) FROM chunks"))

    async def waiting(self, application_name: str) -> int:
        """Backends of ``application_name`` waiting for a lock (a blocked write)."""
        assert self.conn is not None
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                application_name,
            )
        )

    async def release(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self._tx.rollback()
            await self.conn.close()
        self.conn = None


# --------------------------------------------------------------------------- replicas


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join([*filter(None, [parts.query]), *(f"{k}={v}" for k, v in params.items())])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


class Replica:
    """``python -m soundstream serve`` in its own session, output in a file.

    Its broker connection is named after it (``?name=``) and its database
    connections carry it as ``application_name``, so the broker's and PostgreSQL's
    views can be attributed to it.
    """

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.env = env
        self.log = log
        self.port = int(env["SOUNDSTREAM_HTTP_PORT"])
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "soundstream", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid

    # ---- observing

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else is skipped)."""
        found = []
        for line in self.output().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def running(self) -> bool:
        return self.process.poll() is None

    async def readyz(self) -> int | None:
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                answer = await client.get(f"http://127.0.0.1:{self.port}/readyz")
        except httpx.TransportError:
            return None
        return answer.status_code

    async def wait_ready(self, within: float = 45) -> None:
        async def ready() -> bool:
            if not self.running():
                raise AssertionError(
                    f"replica {self.name} exited ({self.process.returncode}):\n{self.tail()}"
                )
            return await self.readyz() == 200

        await wait_until(ready, within=within, what=f"replica {self.name} ready", interval=0.2)

    async def wait_output(self, text: str, *, within: float) -> None:
        await wait_until(
            lambda: text in self.output(), within=within, what=f"{text!r} in {self.name}'s output"
        )

    async def wait_exit(
        self, within: float, describe: Callable[[], Awaitable[str] | str] | None = None
    ) -> int:
        code = await wait_until(
            lambda: self.process.poll() is not None and (self.process.returncode,),
            within=within,
            what=f"replica {self.name} exits",
            describe=describe,
        )
        return int(code[0])

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                found.append(int(entry.name))
        return found

    def pool_workers(self) -> list[int]:
        """The extraction processes (spawned, not multiprocessing's resource tracker)."""
        workers = []
        for pid in self.children():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                workers.append(pid)
        return workers

    # ---- acting

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole replica: the process and its pool, as when a pod dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.running():
            self.kill()
        else:
            # Orphaned pool workers of a replica that died alone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()
        self._out.close()


class Cluster:
    """Starts replicas against this test's vhost and database; kills them at the end."""

    def __init__(self, broker: Broker, database: str, logs: Path) -> None:
        self.broker = broker
        self.database = database
        self.logs = logs
        self.replicas: list[Replica] = []
        self.proxies: list[Proxy] = []

    def env(
        self,
        name: str,
        *,
        amqp_port: int | None = None,
        database_port: int | None = None,
        database_url: str | None = None,
        **extra: str,
    ) -> dict[str, str]:
        db = database_url or self.database
        if database_port is not None:
            db = with_port(db, database_port)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SOUNDSTREAM_AMQP_URL": self.broker.url(port=amqp_port, name=name),
            "SOUNDSTREAM_DATABASE_URL": with_query(db, application_name=name),
            "SOUNDSTREAM_HTTP_HOST": "127.0.0.1",
            "SOUNDSTREAM_HTTP_PORT": str(free_port()),
            "SOUNDSTREAM_LOG_FORMAT": "json",
            "SOUNDSTREAM_WORKERS": "1",
            "SOUNDSTREAM_ROLES": "ingest",
            "SOUNDSTREAM_BATCH_MAX_WAIT_MS": "50",
        }
        env.update(extra)
        return env

    def start(
        self,
        name: str,
        *,
        amqp_port: int | None = None,
        database_port: int | None = None,
        database_url: str | None = None,
        **extra: str,
    ) -> Replica:
        env = self.env(
            name,
            amqp_port=amqp_port,
            database_port=database_port,
            database_url=database_url,
            **extra,
        )
        replica = Replica(name, env, self.logs / f"{name}.log")
        self.replicas.append(replica)
        return replica

    def proxy(self, target: int) -> Proxy:
        proxy = Proxy(target)
        proxy.listen()
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        for proxy in self.proxies:
            proxy.close()


async def stored_exactly_once(
    store: Store, broker: Broker, sensors: dict[str, int], *, since: float
) -> tuple[float, QueueStats]:
    """Wait until every chunk of ``sensors`` (sensor -> chunks 0..n-1) is stored and the
    queue has settled (nothing ready, nothing unacked), then check each chunk is there
    exactly once. Returns the seconds from ``since`` until all were stored, and the
    queue's final figures."""
    await store.wait_chunks(sum(sensors.values()), within=40)
    took = time.monotonic() - since
    stats = await broker.wait_settled()
    await store.assert_exactly(sensors)
    return took, stats


@dataclass(frozen=True)
class MidStream:
    """A replica busy with a backlog: the replica, the broker's footprint once it was
    ready, and how many chunks were published."""

    replica: Replica
    start: Footprint
    total: int


async def mid_stream(
    cluster: Cluster,
    store: Store,
    sensors: Iterable[str],
    per_sensor: int,
    *,
    stored_first: int,
) -> MidStream:
    """Replica ``a`` (batches of 4 chunks, 4 deliveries out at a time) ready;
    ``per_sensor`` chunks of each sensor published; ``stored_first`` of them
    committed: the moment to inject a fault. The small prefetch keeps ``a`` a few
    seconds behind the publisher, so the fault finds it mid-stream (at full speed it
    drains the backlog as fast as it is published)."""
    a = cluster.start("a", SOUNDSTREAM_BATCH_MAX_CHUNKS="4", SOUNDSTREAM_PREFETCH="4")
    await a.wait_ready()
    start = await cluster.broker.footprint()
    async with Publisher(cluster.broker) as publisher:
        total = await publisher.chunks(tuple(sensors), range(per_sensor))
    await store.wait_chunks(stored_first, within=30)
    return MidStream(a, start, total)
