"""The supervisor: the only place that creates streams, pools and task groups.

Lifecycle, as one path: start the HTTP actor (health answers at once), start the
ingest pipeline under a restart policy, wait for a signal, drain the pipeline
within ``drain_timeout_s``, stop HTTP, return.

The ingest pipeline (consumer -> extractor -> writer, acks back to the consumer)
is restarted as a whole when any of its actors fails: its unacked deliveries die
with its channel and the broker redelivers them, and idempotent writes make the
repeat harmless, so no actor needs to reconcile state with a restarted sibling.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack, contextmanager

import aiormq
import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from soundstream import api, consumer, extractor, server, store, worker, writer
from soundstream.config import Settings
from soundstream.errors import RestartBudgetExhausted
from soundstream.records import Delivery, Extracted
from soundstream.status import Status

log = structlog.get_logger(__name__)

MAX_BACKOFF_S = 30.0
# Failures that mean a dependency is out of reach; the pipeline waits for it.
UNAVAILABLE = (
    OSError,  # includes ConnectionError, TimeoutError and aiormq's connection errors
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    aiormq.exceptions.ChannelInvalidStateError,
)
BAD_CREDENTIALS = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
)
READY_CHECK_TIMEOUT_S = 2.0


async def serve(
    settings: Settings,
    stop: anyio.Event | None = None,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run every enabled role until SIGTERM/SIGINT or ``stop`` is set, then drain.

    Reports the bound HTTP port once the server listens and the pipeline starts.
    """
    status = Status()
    stop = stop or anyio.Event()
    if settings.api and not settings.api_keys:
        log.warning("api_open", detail="SOUNDSTREAM_API_KEYS is empty: /v1/* needs no key")
    async with AsyncExitStack() as stack:
        # Serves the API's queries, and lets readiness ask the database itself in
        # either role. min_size=0: no connection at start, so a database that is
        # down makes the process unready instead of failing it.
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=0,
            max_size=settings.db_pool_size if settings.api else 1,
        )
        stack.push_async_callback(pool.close)

        async def ready() -> list[str]:
            problems = status.problems()
            if stop.is_set():
                problems.append("process: draining")
            if not status.is_down(writer.COMPONENT):  # else the writer already says why
                problems.extend(await _ping(pool))
            return problems

        app = api.create_app(settings, pool=pool if settings.api else None, ready=ready)
        http_stop = anyio.Event()
        with _one_error():
            async with anyio.create_task_group() as tg:
                watching_signals = anyio.CancelScope()
                tg.start_soon(_on_signals, stop, watching_signals)
                port = await tg.start(server.run, settings, app, http_stop)
                log.info(
                    "http_listening",
                    host=settings.http_host,
                    port=port,
                    roles=sorted(settings.roles),
                )
                task_status.started(port)
                if settings.ingest:
                    status.expect(consumer.COMPONENT, extractor.COMPONENT, writer.COMPONENT)
                    await _supervise_ingest(settings, stop, status)
                else:
                    await stop.wait()
                http_stop.set()  # the HTTP actor finishes its requests and returns
                watching_signals.cancel()
    log.info("stopped")


@contextmanager
def _one_error() -> Iterator[None]:
    """A task group reports even a single failure as a group; callers (and the
    command line) want the failure itself, e.g. ``RestartBudgetExhausted``."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _ping(pool: asyncpg.Pool) -> list[str]:
    try:
        with anyio.fail_after(READY_CHECK_TIMEOUT_S):
            await pool.fetchval("SELECT 1")
    except Exception as exc:
        return [f"{writer.COMPONENT}: unreachable ({type(exc).__name__})"]
    return []


async def _on_signals(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    with scope, anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("signal_again_ignored", signal=signal.Signals(signum).name)
                continue
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            stop.set()


async def _supervise_ingest(settings: Settings, stop: anyio.Event, status: Status) -> None:
    """Run the pipeline; restart it with backoff; give up past the restart budget."""
    crashes: deque[float] = deque()
    backoff = 0.5
    while True:
        started = time.monotonic()
        try:
            await _run_pipeline(settings, stop, status)
            return  # drained after ``stop``
        except Exception as exc:
            if stop.is_set():
                log.error("drain_failed", error=_describe(exc))
                return
            if _unavailable(exc):
                # Waiting for a dependency is not a crash: no budget is spent.
                log.warning("dependency_unavailable", error=_describe(exc), retry_in_s=backoff)
                backoff = await _pause(backoff, stop)
                if stop.is_set():
                    return
                continue
            now = time.monotonic()
            if now - started > settings.restart_window_s:
                backoff = 0.5  # it had been healthy for a while
            crashes.append(now)
            while crashes and now - crashes[0] > settings.restart_window_s:
                crashes.popleft()
            if len(crashes) > settings.max_restarts:
                log.critical(
                    "restart_budget_exhausted",
                    crashes=len(crashes),
                    window_s=settings.restart_window_s,
                    error=repr(exc),
                )
                raise RestartBudgetExhausted(
                    f"ingest pipeline failed {len(crashes)} times in {settings.restart_window_s} s"
                ) from exc
            log.error("pipeline_crashed", error=_describe(exc), restart_in_s=backoff)
            backoff = await _pause(backoff, stop)
            if stop.is_set():
                return


async def _pause(backoff: float, stop: anyio.Event) -> float:
    """Wait ``backoff`` (or until stopped); return the next, longer one."""
    with anyio.move_on_after(backoff):
        await stop.wait()
    return min(backoff * 2, MAX_BACKOFF_S)


def _failures(exc: BaseException) -> list[BaseException]:
    return list(_leaves(exc)) if isinstance(exc, BaseExceptionGroup) else [exc]


def _unavailable(exc: BaseException) -> bool:
    """The broker or database could not be reached (and not for bad credentials)."""
    return all(
        isinstance(e, UNAVAILABLE) and not isinstance(e, BAD_CREDENTIALS) for e in _failures(exc)
    )


def _describe(exc: BaseException) -> str:
    return "; ".join(f"{type(e).__name__}: {e}" for e in _failures(exc))


async def _run_pipeline(settings: Settings, stop: anyio.Event, status: Status) -> None:
    # Stream sizes: each holds at most what fills one pool round or one batch; the
    # broker's prefetch bounds the total regardless.
    deliveries_in, deliveries_out = anyio.create_memory_object_stream[Delivery](
        settings.workers * settings.chunks_per_task
    )
    extracted_in, extracted_out = anyio.create_memory_object_stream[Extracted](
        settings.batch_max_chunks
    )
    acks_in, acks_out = anyio.create_memory_object_stream[int](settings.effective_prefetch)
    async with AsyncExitStack() as stack:
        # Each actor closes its own ends when it finishes; these close whatever a
        # crash or cancellation left open.
        for end in (deliveries_in, deliveries_out, extracted_in, extracted_out, acks_in, acks_out):
            stack.enter_context(end)
        # Workers are the parallelism; BLAS threads inside them would only fight over
        # the same cores (a 48 kHz chunk ran 3x slower). Spawned children read these
        # when they import numpy, before any code of ours runs there.
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
        pool = ProcessPoolExecutor(
            settings.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.init,
            initargs=(settings.features,),
        )
        stack.push_async_callback(_shutdown_pool, pool)
        # min_size=0: the writer opens the first connection itself, waiting out a
        # database that is not up yet instead of failing the pipeline.
        db = await asyncpg.create_pool(
            settings.database_url, min_size=0, max_size=1, init=store.init_connection
        )
        stack.push_async_callback(db.close)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain_deadline, stop, settings.drain_timeout_s, tg.cancel_scope)
            await tg.start(writer.run, settings, extracted_out, acks_in, db, status)
            await tg.start(extractor.run, settings, deliveries_out, extracted_in, pool, status)
            # Returns once drained: everything it handed on is committed and acked.
            await consumer.run(settings, deliveries_in, acks_out, stop, status)
            tg.cancel_scope.cancel()  # the drain deadline


async def _drain_deadline(stop: anyio.Event, limit_s: float, scope: anyio.CancelScope) -> None:
    await stop.wait()
    await anyio.sleep(limit_s)
    log.error("drain_timeout", timeout_s=limit_s, detail="unacked deliveries will be redelivered")
    scope.cancel()


async def _shutdown_pool(pool: ProcessPoolExecutor) -> None:
    # shutdown() joins the workers; do that off the event loop.
    await anyio.to_thread.run_sync(lambda: pool.shutdown(wait=True, cancel_futures=True))
