"""The upkeep actor: keeps the store in shape beside the writer.

Every ``FOLD_EVERY_S`` it folds the sensors' summary and seq run deltas; at start
and every ``DAILY_EVERY_S`` it creates the day partitions around today and, with
``retention_days`` set, drops the days past it. A database that is away is waited
for (the writer reports it); anything else is logged and tried again: upkeep never
stops ingest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from soundstream.config import Settings
from soundstream.failures import describe, retryable
from soundstream.store import upkeep

log = structlog.get_logger(__name__)
FOLD_EVERY_S = 2.0
DAILY_EVERY_S = 3600.0
DAILY_RETRY_S = 60.0
DAYS_BEHIND, DAYS_AHEAD = 1, 2


async def run(
    settings: Settings,
    *,
    pool: asyncpg.Pool,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    daily_due = anyio.current_time()
    while True:
        if anyio.current_time() >= daily_due:
            done = await _attempt(pool, lambda conn: daily(conn, settings, now()))
            daily_due = anyio.current_time() + (DAILY_EVERY_S if done else DAILY_RETRY_S)
        await _attempt(pool, upkeep.fold_deltas)
        await anyio.sleep(FOLD_EVERY_S)


async def daily(conn: asyncpg.Connection, settings: Settings, moment: datetime) -> None:
    today = moment.astimezone(UTC).date()
    days = [today + timedelta(days=d) for d in range(-DAYS_BEHIND, DAYS_AHEAD + 1)]
    await upkeep.ensure_partitions(conn, days)
    if settings.retention_days:
        await upkeep.expire(conn, settings.retention_days, moment)


async def _attempt(
    pool: asyncpg.Pool, action: Callable[[asyncpg.Connection], Awaitable[object]]
) -> bool:
    """Run ``action`` on a connection; False if it did not succeed this time.

    Upkeep never stops ingest: without new partitions rows land in the default one,
    and unfolded deltas are still read. A database that is away is waited for
    quietly (the writer reports it); any other failure, say a role without CREATE
    on the schema, is logged with its reason and tried again next round.
    """
    try:
        async with pool.acquire() as conn:
            await action(conn)
    except Exception as exc:
        if retryable(exc):
            log.debug("upkeep_deferred", error=str(exc) or type(exc).__name__)
        else:
            log.error("upkeep_failed", error=describe(exc), detail="ingest goes on; retried")
        return False
    return True
