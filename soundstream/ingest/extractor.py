"""The extractor actor: deliveries in, rows ready for COPY out, computed in a process pool.

Whatever is waiting in the inbox (up to ``chunks_per_task`` chunks and
``TASK_MAX_BYTES`` of samples) goes to the pool as one task, so a busy stream pays
the inter-process cost once per several chunks while a quiet one still answers
each chunk at once. At most two tasks per worker are in flight, which keeps every
worker fed and memory bounded.

No chunk can stop the pipeline from here. If a task fails (the worker raised, ran
out of memory, or died), each of its chunks is tried again with the pool to itself;
a chunk that fails so is returned to the queue, where the broker counts the delivery and,
at the queue's delivery limit, dead-letters it with ``x-death``.
"""

from __future__ import annotations

import time

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from soundstream.config import TASK_MAX_BYTES, Settings
from soundstream.core.records import Delivery, Encoded, Extracted, Job, Settle
from soundstream.failures import describe
from soundstream.ingest import handoff
from soundstream.ingest.flow import Flow
from soundstream.ingest.pool import ExtractionPool
from soundstream.observe.metrics import Metrics
from soundstream.observe.tracing import Tracing
from soundstream.status import Status

log = structlog.get_logger(__name__)
COMPONENT = "extractor"


async def run(
    settings: Settings,
    inbox: MemoryObjectReceiveStream[Delivery],
    outbox: MemoryObjectSendStream[Extracted],
    returns: MemoryObjectSendStream[Settle],
    *,
    pool: ExtractionPool,
    flow: Flow,
    status: Status,
    metrics: Metrics,
    tracing: Tracing,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # fast_acquire: a free slot is taken without a trip round the event loop, so a
    # reply's slot goes to the next task at once (see ``ingest/handoff``).
    in_flight = anyio.Semaphore(settings.tasks_in_flight, fast_acquire=True)

    async def extract(batch: list[Delivery]) -> None:
        started = time.time_ns()
        try:
            results = await _extract(pool, batch)
        finally:
            in_flight.release()
        ended = time.time_ns()
        per_chunk = (ended - started) / 1e9 / len(batch)
        for _ in batch:
            metrics.extraction_seconds.observe(per_chunk)
        spans = [d.span for d in batch]
        tracing.step(spans, "soundstream.extract", started, ended, {"chunks": len(batch)})
        for delivery, encoded in zip(batch, results, strict=True):
            if encoded is None:
                flow.handed -= 1
                metrics.chunks_returned.inc()
                tracing.finish(delivery.span, "extraction failed; returned to the queue")
                await handoff.put(returns, Settle(delivery.tag, requeue=True))
            else:
                await handoff.put(outbox, Extracted.of(delivery, encoded))

    status.up(COMPONENT)
    task_status.started()
    try:
        async with outbox, returns, anyio.create_task_group() as tg, inbox:
            async for first in inbox:
                batch = [first]
                size = first.chunk.pcm.nbytes
                while len(batch) < settings.chunks_per_task:
                    try:
                        item = inbox.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    if size + item.chunk.pcm.nbytes > TASK_MAX_BYTES:
                        await in_flight.acquire()
                        tg.start_soon(extract, batch)
                        batch, size = [], 0
                    batch.append(item)
                    size += item.chunk.pcm.nbytes
                await in_flight.acquire()
                tg.start_soon(extract, batch)
    finally:
        status.down(COMPONENT, "stopped")


async def _extract(pool: ExtractionPool, batch: list[Delivery]) -> list[Encoded | None]:
    """Each delivery's encoded row, or None for one that fails even alone in the pool.

    A failed task says nothing about which chunk failed, nor does a worker that died
    while other tasks ran beside it: each chunk is tried again with the pool to
    itself, and only a chunk that fails so is blamed.
    """
    try:
        return list(await pool.extract([Job.of(d) for d in batch]))
    except Exception as exc:
        log.warning("extraction_failed", chunks=len(batch), error=describe(exc))
    results: list[Encoded | None] = []
    for delivery in batch:
        try:
            results.extend(await pool.extract([Job.of(delivery)], alone=True))
        except Exception as exc:
            await _check_pool(pool)
            _log_failed(delivery, exc)
            results.append(None)
    return results


async def _check_pool(pool: ExtractionPool) -> None:
    """Before a chunk is blamed, make sure the pool can run anything at all: workers
    that cannot start (a memory limit below what they need) fail every task, and
    that is a crash of this process, not a fault of each chunk."""
    try:
        await pool.extract([], alone=True)
    except Exception as exc:
        raise RuntimeError(f"the extraction pool cannot run a task: {describe(exc)}") from exc


def _log_failed(delivery: Delivery, exc: BaseException) -> None:
    chunk = delivery.chunk
    log.error(
        "chunk_extraction_failed",
        sensor_id=chunk.sensor_id,
        seq=chunk.seq,
        samples=chunk.n_samples,
        error=describe(exc) or type(exc).__name__,
        detail="returned to the queue; the broker dead-letters it at the delivery limit",
    )
