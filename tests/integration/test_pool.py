"""The extraction pool with real spawned workers: the rows it returns, the errors
it passes back, a worker killed mid-task, a request larger than a worker may hold,
requests and replies larger than the sockets' buffers, the workers' priority, and
workers that end with the pool."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

from soundstream import config
from soundstream.core import wire
from soundstream.core.records import Job
from soundstream.ingest import worker
from soundstream.ingest.pool import ExtractionPool, WorkerDied, open_pool

PARAMS = config.load({}, roles=frozenset({"ingest"})).features


def job(seq: int, rate: int = 16_000) -> Job:
    pcm = (np.random.default_rng(seq).standard_normal(rate) * 3000).astype(np.int16)
    return Job(wire.Chunk("mic", seq, seq * 1_000_000_000, rate, pcm), received_us=seq)


@contextlib.asynccontextmanager
async def warmed() -> AsyncIterator[ExtractionPool]:
    # Not a fixture: the pool's task group must open and close in the test's task.
    async with open_pool(2, PARAMS, memory_mb=64) as pool:
        await pool.warm()
        yield pool


async def test_rows_are_what_the_worker_function_computes() -> None:
    async with warmed() as pool:
        jobs = [job(seq) for seq in range(5)]
        assert await pool.extract(jobs) == worker.encode_many(PARAMS, jobs)
        assert await pool.extract([]) == []


async def test_an_error_in_a_worker_comes_back_with_its_type() -> None:
    async with warmed() as pool:
        [first, second] = pool._workers
        with pytest.raises(ValueError, match="invalid literal"):
            await first.call(int, "not a number")
        # The worker goes on serving.
        assert await first.call(int, "7") == 7
        assert await second.call(os.getpid) == second.process.pid


async def test_a_killed_worker_fails_its_task_and_is_replaced() -> None:
    async with warmed() as pool:
        first = pool._workers[0]
        victim = first.process.pid
        assert victim is not None
        failed: list[BaseException] = []

        async def sleep_in_the_worker() -> None:
            try:
                await first.call(time.sleep, 30)
            except WorkerDied as exc:
                failed.append(exc)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleep_in_the_worker)
            await anyio.wait_all_tasks_blocked()  # the request is sent; the worker sleeps
            assert len(first.pending) == 1
            os.kill(victim, signal.SIGKILL)
        assert time.monotonic() - started < 10
        assert len(failed) == 1 and str(victim) in str(failed[0])
        # The next tasks run, on a fresh worker in its place.
        rows = await pool.extract([job(1)])
        rows += await pool.extract([job(2)])
        assert len(rows) == 2
        assert victim not in pool.pids() and len(pool.pids()) == 2
        assert pool.statistics()["replaced"] == 1


async def test_a_request_larger_than_the_worker_may_hold_fails_alone() -> None:
    async with warmed() as pool:
        [first, _] = pool._workers
        with pytest.raises(MemoryError):
            await first.call(len, b"x" * (256 << 20))
        # Read past, not misread: the same worker answers the next request.
        assert await first.call(len, b"x" * 1000) == 1000
        assert pool.statistics()["replaced"] == 0


async def test_requests_and_replies_larger_than_the_socket_buffers_pass_whole() -> None:
    """Several tasks of a few MiB each, queued on one worker at once: each request is
    written while the worker still reads or computes the last, and every reply comes
    back whole and to the task that asked."""
    async with warmed() as pool:
        [first, _] = pool._workers
        # The largest is more than the reply stream reads ahead before it pauses
        # (twice ``pool.REPLY_BUFFER``).
        payloads = [bytes([i]) * ((size << 20) + i) for i, size in enumerate((5, 1, 9, 5))]
        replies: dict[int, bytes] = {}

        async def echo(i: int) -> None:
            replies[i] = await first.call(bytes, payloads[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(payloads)):
                tg.start_soon(echo, i)
        assert replies == dict(enumerate(payloads))
        assert pool.statistics() == {"workers": 2, "replaced": 0, "in_flight": 0}


async def test_workers_run_at_a_lower_priority_than_the_main_process() -> None:
    async with warmed() as pool:
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        for pid in pool.pids():
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(ours + worker.NICE, 19)


async def test_workers_exit_when_the_pool_closes() -> None:
    async with open_pool(2, PARAMS) as pool:
        await pool.warm()
        processes = [w.process for w in pool._workers]
        assert all(p.is_alive() for p in processes)
    assert [p.exitcode for p in processes] == [0, 0]
