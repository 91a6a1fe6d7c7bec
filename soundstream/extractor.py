"""The extractor actor: deliveries in, features out, computed in a process pool.

Whatever is waiting in the inbox (up to ``chunks_per_task``) goes to the pool as
one task, so a busy stream pays the inter-process cost once per several chunks
while a quiet one still answers each chunk at once. At most two tasks per worker
are in flight, which keeps every worker fed and memory bounded.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from soundstream.config import Settings
from soundstream.features import extract_many
from soundstream.records import Delivery, Extracted
from soundstream.status import Status

COMPONENT = "extractor"


async def run(
    settings: Settings,
    inbox: MemoryObjectReceiveStream[Delivery],
    outbox: MemoryObjectSendStream[Extracted],
    pool: Executor,
    status: Status,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    params = settings.features
    in_flight = anyio.Semaphore(2 * settings.workers)

    async def extract(batch: list[Delivery]) -> None:
        try:
            jobs = [(d.chunk.samples, d.chunk.sample_rate) for d in batch]
            future = pool.submit(extract_many, params, jobs)
            features = await asyncio.wrap_future(future)
        finally:
            in_flight.release()
        for delivery, result in zip(batch, features, strict=True):
            await outbox.send(Extracted.of(delivery, result))

    status.up(COMPONENT)
    task_status.started()
    try:
        async with outbox, anyio.create_task_group() as tg, inbox:
            async for first in inbox:
                batch = [first]
                while len(batch) < settings.chunks_per_task:
                    try:
                        batch.append(inbox.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await in_flight.acquire()
                tg.start_soon(extract, batch)
    finally:
        status.down(COMPONENT, "stopped")
