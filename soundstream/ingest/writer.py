"""The writer actor: the only owner of the ingest database pool.

It gathers extracted chunks into a batch until the batch is full (chunks or frames),
holds everything handed on for extraction (nothing more can come soon), or the
oldest item has waited ``batch_max_wait_ms``; commits it in one transaction, and
only then reports the delivery tags for acking. Up to ``COMMITS_IN_FLIGHT`` batches
commit at once, so gathering the next never waits for the last to commit. A
database that goes away is retried with backoff; meanwhile nothing is acked, the
bounded streams fill, and the broker stops delivering once prefetch is used up:
consumption pauses by itself.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.lowlevel
import asyncpg
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from soundstream.config import COMMITS_IN_FLIGHT, Settings
from soundstream.core.records import Extracted, Settle
from soundstream.failures import retryable
from soundstream.ingest import handoff
from soundstream.ingest.flow import Flow
from soundstream.observe.metrics import Metrics
from soundstream.observe.tracing import Tracing
from soundstream.status import Status
from soundstream.store.write import write_batch

log = structlog.get_logger(__name__)
COMPONENT = "database"
MAX_BACKOFF_S = 10.0
T = TypeVar("T")


async def run(
    settings: Settings,
    inbox: MemoryObjectReceiveStream[Extracted],
    acks: MemoryObjectSendStream[Settle],
    *,
    pool: asyncpg.Pool,
    flow: Flow,
    status: Status,
    metrics: Metrics,
    tracing: Tracing,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await _connect(pool, status, metrics)
    task_status.started()
    slots = anyio.Semaphore(COMMITS_IN_FLIGHT, fast_acquire=True)

    async def commit(batch: list[Extracted]) -> None:
        try:
            with structlog.contextvars.bound_contextvars(batch_id=secrets.token_hex(6)):
                await _commit(pool, batch, status, metrics, tracing)
        finally:
            slots.release()
        flow.committed += len(batch)
        # All at once, so that the consumer can ack them together.
        for item in batch:
            await handoff.put(acks, Settle(item.tag))

    async with acks, inbox, anyio.create_task_group() as tg:
        while True:
            await slots.acquire()
            batch = await _collect(inbox, settings, flow)
            if not batch:
                break
            flow.handed -= len(batch)
            tg.start_soon(commit, batch)


async def _collect(
    inbox: MemoryObjectReceiveStream[Extracted], settings: Settings, flow: Flow
) -> list[Extracted]:
    """The next batch; empty only when the inbox is closed and drained."""
    try:
        first = await handoff.take(inbox)
    except anyio.EndOfStream:
        return []
    batch = [first]
    frames = first.frames.n_frames
    deadline = anyio.current_time() + settings.batch_max_wait_ms / 1000
    while (
        len(batch) < min(settings.batch_max_chunks, flow.handed)
        and frames < settings.batch_max_frames
    ):
        item = await handoff.take_before(inbox, deadline)
        if item is None:
            break  # waited long enough, or nothing more will come
        batch.append(item)
        frames += item.frames.n_frames
    return batch


async def _commit(
    pool: asyncpg.Pool,
    batch: list[Extracted],
    status: Status,
    metrics: Metrics,
    tracing: Tracing,
) -> None:
    """Commit ``batch``; count, trace and log it as one line."""

    async def write() -> tuple[int, int]:
        async with pool.acquire() as conn:
            result: tuple[int, int] = await write_batch(conn, batch)
            return result

    started_ns = time.time_ns()
    chunks, frames = await _retrying("batch_write_failed", write, status, metrics)
    ended_ns = time.time_ns()
    seconds = (ended_ns - started_ns) / 1e9
    metrics.batch_write_seconds.observe(seconds)
    metrics.batch_chunks.observe(len(batch))
    metrics.chunks_stored.inc(chunks)
    metrics.frames_stored.inc(frames)
    lags = [(ended_ns - item.start_ns) / 1e9 for item in batch]
    for lag in lags:  # a sensor clock ahead of ours is no lag
        metrics.ingest_lag_seconds.observe(max(lag, 0.0))
    spans = [item.span for item in batch]
    tracing.step(spans, "soundstream.write", started_ns, ended_ns, {"chunks": len(batch)})
    for span in spans:
        tracing.finish(span)
    log.info(
        "batch_written",
        chunks=len(batch),
        new_chunks=chunks,
        frames=frames,
        ms=round(seconds * 1000, 1),
        lag_s=round(max(lags), 3),
    )


async def _connect(pool: asyncpg.Pool, status: Status, metrics: Metrics) -> None:
    """Wait until a connection opens (its set-up also checks the schema)."""

    async def ping() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    await _retrying("database_unreachable", ping, status, metrics)


async def _retrying(
    event: str, action: Callable[[], Awaitable[T]], status: Status, metrics: Metrics
) -> T:
    """Run ``action`` until the database lets it succeed, backing off in between.

    Only errors of reachability retry; anything else (a missing schema, a bug)
    propagates and the supervisor restarts the pipeline.
    """
    backoff = 0.2
    failing_since: float | None = None
    while True:
        try:
            result = await action()
        except Exception as exc:
            if not retryable(exc):
                raise
            if failing_since is None:
                failing_since = time.monotonic()
            status.down(COMPONENT, f"unreachable ({type(exc).__name__})")
            log.warning(
                event,
                error=str(exc) or type(exc).__name__,
                failing_for_s=round(time.monotonic() - failing_since, 1),
                retry_in_s=backoff,
            )
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        if failing_since is not None:
            metrics.reconnects.labels("database").inc()
            log.info("database_recovered", after_s=round(time.monotonic() - failing_since, 1))
        status.up(COMPONENT)
        return result
