"""The extraction process pool: spawned, warmed-up workers, each fed by the event
loop over a socket of its own, and replaced one by one when one dies.

A task is pickled and written to the least busy worker's socket, and its reply read
back by that worker's reader task, all on the event loop: no helper threads to
hand work over, so a task's round trip is its compute and two socket writes. A
worker answers in order, so a second task can wait in its socket while it works on
the first. The sockets are asyncio streams with a send buffer that holds the tasks
queued: a request goes out in one write and a reply is read as it arrives, so
neither waits for the event loop to come round once per 64 KiB while a busy main
process serves the broker and the database.

Workers run at a lower CPU priority than the main process (``worker.NICE``). The
main process is the hub every other process waits on: the broker for acks, the
database for rows, the workers for tasks. Given the core first whenever it has
work, it keeps them all fed, and the workers take whatever is left.

A worker that dies (killed, out of memory, a crash in native code) fails the tasks
it held with ``WorkerDied``; it is replaced when the next task is given out, and
the callers decide what to run again. The pool outlives pipeline restarts, so a
restart does not pay for spawning workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, cast

import anyio
import structlog
from anyio.abc import TaskGroup

from soundstream.config import TASK_MAX_BYTES
from soundstream.core.fields import FeatureParams
from soundstream.core.records import Encoded, Job
from soundstream.ingest import worker

log = structlog.get_logger(__name__)
# How long closing the pool waits for a worker to exit before killing it.
EXIT_WAIT_S = 5.0
# What a worker's reply stream reads ahead before it waits to be read: a whole
# reply of a full task (rows are smaller than the samples they came from).
REPLY_BUFFER = TASK_MAX_BYTES
# The kernel's send buffer asked for on each worker's socket: two full tasks.
SEND_BUFFER = 2 * TASK_MAX_BYTES


class WorkerDied(Exception):
    """A pool worker exited while it held the task."""


@dataclass
class _Reply:
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False
    value: Any = None

    def resolve(self, ok: bool, value: Any) -> None:
        self.ok, self.value = ok, value
        self.done.set()


class _Worker:
    """One worker process and the main process's end of its socket.

    The socket is an asyncio stream: the event loop moves bytes whenever the socket
    is ready, in its own callbacks, so a request goes out in one write (what the
    kernel does not take at once is sent as the worker reads) and a reply is
    gathered as it arrives, instead of one trip round the event loop per 64 KiB.
    """

    def __init__(
        self, process: BaseProcess, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.pending: deque[_Reply] = deque()  # sent and not answered, in order
        self.alive = True

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        if not self.alive or self.writer.is_closing():
            raise WorkerDied(self.describe())
        request = pickle.dumps((function, args), pickle.HIGHEST_PROTOCOL)
        reply = _Reply()
        self.pending.append(reply)
        # Written whole or buffered whole by the transport, so no cancellation can
        # leave the worker reading half a request. What the kernel did not take
        # stays in the transport's buffer, the one copy of the request left (the
        # extractor bounds the tasks in flight, so the buffer too).
        self.writer.write(worker.FRAME.pack(len(request)))
        self.writer.write(request)
        del request
        await reply.done.wait()
        if reply.ok:
            return reply.value
        raise cast(BaseException, reply.value)

    async def read_replies(self) -> None:
        """Resolve each pending task with its reply; when the worker is gone, fail
        what is left."""
        try:
            while True:
                header = await self.reader.readexactly(worker.FRAME.size)
                (size,) = worker.FRAME.unpack(header)
                ok, value = pickle.loads(await self.reader.readexactly(size))
                self.pending.popleft().resolve(ok, value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the worker or its socket is gone
        finally:
            self.alive = False
            self.writer.close()
            while self.pending:
                self.pending.popleft().resolve(False, WorkerDied(self.describe()))

    def describe(self) -> str:
        code = self.process.exitcode
        state = "running" if code is None else f"exit code {code}"
        return f"extraction worker {self.process.pid} is gone ({state})"

    async def aclose(self) -> None:
        """Close the socket (the worker exits at end of stream); kill it if it has
        not exited within ``EXIT_WAIT_S``."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        await anyio.to_thread.run_sync(self.process.join, EXIT_WAIT_S)
        if self.process.exitcode is None:
            self.process.kill()
            await anyio.to_thread.run_sync(self.process.join)


class ExtractionPool:
    def __init__(
        self, workers: int, params: FeatureParams, task_group: TaskGroup, *, memory_mb: int = 0
    ) -> None:
        self._size = workers
        self._params = params
        self._memory_mb = memory_mb
        self._task_group = task_group
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._replaced = 0
        # Tasks in flight, and whether one has the pool to itself: a worker that
        # dies takes the tasks it held with it, so only a task that ran alone can
        # tell which chunk killed it.
        self._running = 0
        self._alone = False
        # Taken for every task: when free, without a trip round the event loop.
        self._changed = anyio.Condition(anyio.Lock(fast_acquire=True))
        self._spawning = anyio.Lock(fast_acquire=True)

    async def _spawn(self) -> _Worker:
        # Workers are the parallelism; BLAS threads inside them would only fight over
        # the same cores (a 48 kHz chunk ran 3x slower). Spawned children read these
        # when they import numpy, before any code of ours runs there.
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
        ours, theirs = socket.socketpair()
        # Room in the kernel for the tasks a worker has queued, so a request is
        # written in one go while the worker still computes the last one (the kernel
        # caps this at net.core.wmem_max; the transport holds any rest).
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        with theirs:
            process = self._context.Process(
                target=worker.serve,
                args=(theirs, self._params, self._memory_mb),
                name="soundstream-extraction",
                daemon=True,
            )
            process.start()
        # A reply is read whole as soon as it is there, however large.
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=REPLY_BUFFER)
        started = _Worker(process, reader, writer)
        self._task_group.start_soon(started.read_replies)
        return started

    async def _ready_worker(self) -> _Worker:
        """The live worker with the fewest tasks, replacing dead ones first."""
        async with self._spawning:
            for i, gone in enumerate(self._workers):
                if not gone.alive:
                    self._replaced += 1
                    log.warning("worker_died", detail=gone.describe(), replaced=self._replaced)
                    self._workers[i] = await self._spawn()
                    self._task_group.start_soon(gone.aclose)
            while len(self._workers) < self._size:
                self._workers.append(await self._spawn())
        return min(self._workers, key=lambda w: len(w.pending))

    async def extract(self, jobs: list[Job], *, alone: bool = False) -> list[Encoded]:
        """The encoded rows of ``jobs``, in one task. Raises whatever the worker raised,
        or ``WorkerDied`` if its worker died (it is replaced by the next task).
        ``alone``: wait until no other task is in flight, and let none start meanwhile.
        """
        async with self._changed:
            while self._alone or (alone and self._running):
                await self._changed.wait()
            self._alone = alone
            self._running += 1
        try:
            chosen = await self._ready_worker()
            result: list[Encoded] = await chosen.call(worker.encode_many, self._params, jobs)
            return result
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self._running -= 1
                    if alone:
                        self._alone = False
                    self._changed.notify_all()

    async def warm(self) -> None:
        """Start every worker now (each warms up as it starts) and wait until all
        answer, so that the first chunks do not wait for workers to start."""
        await self._ready_worker()
        async with anyio.create_task_group() as tg:
            for each in self._workers:
                tg.start_soon(each.call, worker.started)

    def busy(self) -> int:
        """Workers holding a task."""
        return sum(1 for w in self._workers if w.pending)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def statistics(self) -> dict[str, int]:
        return {
            "workers": self._size,
            "replaced": self._replaced,
            "in_flight": sum(len(w.pending) for w in self._workers),
        }

    async def aclose(self) -> None:
        async with anyio.create_task_group() as tg:
            for each in self._workers:
                tg.start_soon(each.aclose)
        self._workers.clear()


@contextlib.asynccontextmanager
async def open_pool(
    workers: int, params: FeatureParams, *, memory_mb: int = 0
) -> AsyncIterator[ExtractionPool]:
    """A pool whose workers live until the block exits."""
    async with anyio.create_task_group() as tg:
        pool = ExtractionPool(workers, params, tg, memory_mb=memory_mb)
        try:
            yield pool
        finally:
            with anyio.CancelScope(shield=True):
                await pool.aclose()
