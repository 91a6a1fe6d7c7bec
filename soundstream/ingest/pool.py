"""The extraction process pool: spawned, warmed-up workers, replaced when one dies.

A worker that dies (killed, out of memory, a crash in native code) breaks a
``ProcessPoolExecutor`` for good: every pending task fails with
``BrokenProcessPool``. ``ExtractionPool`` then starts a fresh executor, once, for
whichever caller notices first, and the callers decide what to run again. The pool
outlives pipeline restarts, so a restart does not pay for spawning workers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import anyio
import structlog

from soundstream.core.fields import FeatureParams
from soundstream.core.records import Encoded, Job
from soundstream.ingest import worker

log = structlog.get_logger(__name__)


class ExtractionPool:
    def __init__(self, workers: int, params: FeatureParams, *, memory_mb: int = 0) -> None:
        self._workers = workers
        self._params = params
        self._memory_mb = memory_mb
        self._replaced = 0
        self._executor = self._start()
        # Tasks in flight, and whether one has the pool to itself: a worker that
        # dies takes every task in flight with it, so only a task that ran alone
        # can tell which chunk killed it.
        self._running = 0
        self._alone = False
        self._changed = anyio.Condition()

    def _start(self) -> ProcessPoolExecutor:
        # Workers are the parallelism; BLAS threads inside them would only fight over
        # the same cores (a 48 kHz chunk ran 3x slower). Spawned children read these
        # when they import numpy, before any code of ours runs there.
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.init,
            initargs=(self._params, self._memory_mb),
        )

    async def extract(self, jobs: list[Job], *, alone: bool = False) -> list[Encoded]:
        """The encoded rows of ``jobs``, in one task. Raises whatever the worker raised, or
        ``BrokenProcessPool`` if a worker died (the pool is replaced by then).
        ``alone``: wait until no other task is in flight, and let none start meanwhile.
        """
        async with self._changed:
            while self._alone or (alone and self._running):
                await self._changed.wait()
            self._alone = alone
            self._running += 1
        try:
            executor = self._executor
            try:
                future = executor.submit(worker.encode_many, self._params, jobs)
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._replace(executor)
                raise
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self._running -= 1
                    if alone:
                        self._alone = False
                    self._changed.notify_all()

    async def warm(self) -> None:
        """Start every worker now (each warms up as it starts) and wait until all run a
        task, so that the first chunks do not wait for workers to start."""
        executor = self._executor
        futures = [executor.submit(worker.started) for _ in range(self._workers)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._executor is not broken:
            return  # a concurrent caller replaced it already
        self._replaced += 1
        log.warning("worker_died", detail="starting a fresh pool", replaced=self._replaced)
        self._executor = self._start()
        broken.shutdown(wait=False, cancel_futures=True)

    def statistics(self) -> dict[str, int]:
        return {"workers": self._workers, "replaced": self._replaced}

    async def aclose(self) -> None:
        # shutdown() joins the workers; do that off the event loop.
        executor = self._executor
        await anyio.to_thread.run_sync(lambda: executor.shutdown(wait=True, cancel_futures=True))
