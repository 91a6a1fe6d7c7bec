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

import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from functools import partial

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from soundstream.config import COMMITS_IN_FLIGHT, MIB, Settings
from soundstream.core.records import Delivery, Extracted, Settle
from soundstream.errors import RestartBudgetExhausted, TopologyMismatch
from soundstream.failures import database_failure, describe, leaves, unavailable, undecodable
from soundstream.http import server
from soundstream.http.app import create_app
from soundstream.http.live import Hub
from soundstream.ingest import consumer, extractor, upkeep, writer
from soundstream.ingest.flow import Flow
from soundstream.ingest.pool import ExtractionPool, open_pool
from soundstream.observe.metrics import Metrics
from soundstream.observe.tracing import Tracing
from soundstream.status import Check, Readiness, Status
from soundstream.store import announce, migrate
from soundstream.store.session import keep_session
from soundstream.store.write import init_connection

log = structlog.get_logger(__name__)

MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
READY_CHECK_TIMEOUT_S = 2.0
LIVE_FEED = "live_feed"


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
    status.up("process")
    metrics = Metrics()
    metrics.watch_status(status)
    tracing = Tracing(settings.trace_exporter)
    stop = stop or anyio.Event()
    if settings.api and not settings.api_key_digests:
        log.warning("api_open", detail="SOUNDSTREAM_API_KEYS is empty: /v1/* needs no key")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(anyio.to_thread.run_sync, tracing.shutdown)
        # Serves the API's queries, and lets readiness ask the database itself in
        # either role. min_size=0: no connection at start, so a database that is
        # down makes the process unready instead of failing it.
        # Every API query is bounded in time by PostgreSQL itself.
        timeout_ms = str(int(settings.query_timeout_s * 1000))
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=0,
            max_size=settings.db_pool_size,
            # JIT compiling costs more than it saves on the API's short queries, and
            # the planner's row estimates for unnested arrays trip its thresholds.
            server_settings={"statement_timeout": timeout_ms, "jit": "off"},
            # API queries leave no session state behind (settings only SET LOCAL,
            # cursors only inside transactions, no LISTEN or session locks), so a
            # returned connection needs no reset round trip; asyncpg still rolls
            # back a transaction left open.
            reset=keep_session,
        )
        stack.push_async_callback(pool.close)
        # Readiness asks the database on a connection of its own, so that busy API
        # queries never make the process look unready (nor the reverse).
        health = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=1)
        stack.push_async_callback(health.close)

        # The live view's announcement feed (an API role's), listened to below.
        hub = Hub() if settings.api else None
        ready = _readiness(settings, stop, status, health, hub)
        app = create_app(
            settings,
            pool=pool if settings.api else None,
            ready=ready,
            metrics=metrics,
            tracing=tracing,
            hub=hub,
        )
        http_stop = anyio.Event()
        with _one_error():
            async with anyio.create_task_group() as tg:
                watching_signals = anyio.CancelScope()
                tg.start_soon(_on_signals, stop, watching_signals)
                listening = anyio.CancelScope()
                if hub is not None:
                    tg.start_soon(_listen, settings.database_url, hub, listening)
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
                    await _supervise_ingest(settings, stop, status, metrics, tracing)
                else:
                    await stop.wait()
                if hub is not None:
                    hub.close()  # live streams say so and end, or HTTP would wait on them
                http_stop.set()  # the HTTP actor finishes its requests and returns
                watching_signals.cancel()
                listening.cancel()
    log.info("stopped")


def _readiness(
    settings: Settings, stop: anyio.Event, status: Status, health: asyncpg.Pool, hub: Hub | None
) -> Callable[[], Awaitable[Readiness]]:
    """What ``/readyz`` asks. The live feed is listed among the checks but is never a
    reason to be unready: without it live streams poll, and nothing else needs it."""

    def checks() -> dict[str, Check]:
        listed = status.checks()
        if hub is not None:
            listed[LIVE_FEED] = hub.feed.check
        return listed

    async def ready() -> Readiness:
        if stop.is_set():
            status.down("process", "draining")
        if not settings.ingest:  # the database as the API sees it
            problem = await _ping(health)
            if problem:
                status.down(writer.COMPONENT, problem)
            else:
                status.up(writer.COMPONENT)
            return Readiness(status.problems(), checks())
        problems = status.problems()
        if not status.is_down(writer.COMPONENT):  # else the writer already says why
            problem = await _ping(health)
            problems.extend([f"{writer.COMPONENT}: {problem}"] if problem else [])
        return Readiness(problems, checks())

    return ready


@contextmanager
def _one_error() -> Iterator[None]:
    """A task group reports even a single failure as a group; callers (and the
    command line) want the failure itself, e.g. ``RestartBudgetExhausted``."""
    try:
        yield
    except BaseExceptionGroup as group:
        failures = list(leaves(group))
        if len(failures) == 1:
            raise failures[0] from group
        raise


async def _ping(pool: asyncpg.Pool) -> str:
    """Why the database cannot serve this code, or "" when it can: it does not answer
    a query, or its schema lacks migrations the code has (the API's reads would fail
    on what is not there yet)."""
    try:
        with anyio.fail_after(READY_CHECK_TIMEOUT_S):
            async with pool.acquire() as conn:
                behind = await migrate.missing(conn)
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    if behind:
        versions = ", ".join(map(str, behind))
        return f"schema behind the code (migrations {versions} not applied): run migrate"
    return ""


async def _listen(database_url: str, hub: Hub, scope: anyio.CancelScope) -> None:
    with scope:
        await announce.listen(database_url, hub.feed)


async def _on_signals(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    with scope, anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("signal_again_ignored", signal=signal.Signals(signum).name)
                continue
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            stop.set()


async def _supervise_ingest(
    settings: Settings, stop: anyio.Event, status: Status, metrics: Metrics, tracing: Tracing
) -> None:
    """Run the pipeline; restart it with backoff; give up past the restart budget.

    The worker pool outlives pipeline restarts (it is replaced only when a worker
    dies), so a restart costs a reconnect, not a round of spawning workers.
    """
    memory_mb = settings.worker_memory_mb
    async with open_pool(settings.workers, settings.features, memory_mb=memory_mb) as pool:
        status.down(extractor.COMPONENT, "starting workers")
        started = time.monotonic()
        await pool.warm()
        log.info(
            "workers_started", workers=settings.workers, s=round(time.monotonic() - started, 1)
        )
        metrics.pool_workers.set(settings.workers)
        metrics.watch(metrics.pool_workers_busy, pool.busy)
        metrics.watch(metrics.pool_workers_replaced, lambda: pool.statistics()["replaced"])
        metrics.bytes_held_limit.set(settings.max_held_mb * MIB)
        await _restart_loop(settings, stop, status, pool, metrics=metrics, tracing=tracing)


async def _restart_loop(
    settings: Settings,
    stop: anyio.Event,
    status: Status,
    pool: ExtractionPool,
    *,
    metrics: Metrics,
    tracing: Tracing,
) -> None:
    crashes: deque[float] = deque()
    backoff = MIN_BACKOFF_S
    # Crashes blamed on single messages since the last commit. One message can cause
    # at most delivery_limit + 1 in a row before the broker dead-letters it; more
    # than that means every message fails (a schema or a bug, not the messages), and
    # those crashes spend the budget, so the process exits instead of dead-lettering
    # the queue one message at a time.
    blamed_in_a_row = 0
    while True:
        flow = Flow()
        _watch_flow(metrics, flow)
        try:
            # Every run starts cautious: the deliveries an earlier run (of this or
            # another replica) held come back first, one at a time.
            await _run_pipeline(
                settings, stop, status, pool, flow, metrics=metrics, tracing=tracing
            )
            return  # drained after ``stop``
        except Exception as exc:
            if stop.is_set():
                log.error("drain_failed", error=describe(exc))
                return
            fatal = next((e for e in leaves(exc) if isinstance(e, TopologyMismatch)), None)
            if fatal is not None:
                raise fatal from None
            if flow.window:
                backoff = MIN_BACKOFF_S  # it had recovered: a new failure starts over
            if flow.committed:
                blamed_in_a_row = 0
            blamed = _blamed_on_a_message(exc, flow)
            if blamed:
                blamed_in_a_row += 1
            metrics.reconnects.labels("broker").inc()  # the next run connects again
            metrics.pipeline_restarts.labels(_cause(exc, blamed)).inc()
            if unavailable(exc):
                # Waiting for a dependency is not a crash: no budget is spent.
                log.warning("dependency_unavailable", error=describe(exc), retry_in_s=backoff)
                backoff = await _pause(backoff, stop)
            elif blamed and blamed_in_a_row <= settings.delivery_limit + 1:
                # The broker counts this delivery and dead-letters the message at the
                # delivery limit, which bounds the loop: no budget is spent.
                log.error(
                    "pipeline_crashed_on_a_message",
                    error=describe(exc),
                    detail="the broker dead-letters a message returned more than "
                    f"{settings.delivery_limit} times",
                )
                await _pause(MIN_BACKOFF_S, stop)
            else:
                now = time.monotonic()
                crashes.append(now)
                while crashes and now - crashes[0] > settings.restart_window_s:
                    crashes.popleft()
                if len(crashes) > settings.max_restarts:
                    log.critical(
                        "restart_budget_exhausted",
                        crashes=len(crashes),
                        window_s=settings.restart_window_s,
                        error=describe(exc),
                    )
                    raise RestartBudgetExhausted(
                        f"ingest pipeline failed {len(crashes)} times in "
                        f"{settings.restart_window_s} s; last: {describe(exc)}"
                    ) from exc
                log.error("pipeline_crashed", error=describe(exc), restart_in_s=backoff)
                backoff = await _pause(backoff, stop)
            if stop.is_set():
                return


def _watch_flow(metrics: Metrics, flow: Flow) -> None:
    """The gauges of what this pipeline run holds."""
    metrics.watch(metrics.deliveries_held, lambda: flow.held)
    metrics.watch(metrics.bytes_held, lambda: flow.unsettled.held_bytes)
    metrics.watch(metrics.prefetch, lambda: flow.window)


def _cause(exc: BaseException, blamed: bool) -> str:
    """The restart's cause, as the metric labels it."""
    if unavailable(exc):
        return "database_unavailable" if database_failure(exc) else "broker_unavailable"
    return "message" if blamed else "crash"


def _blamed_on_a_message(exc: BaseException, flow: Flow) -> bool:
    """The AMQP client could not decode a message the broker sent, or a cautious run
    (prefetch 1) crashed holding exactly one delivery."""
    return undecodable(exc) or (flow.window == 1 and flow.held == 1)


async def _pause(backoff: float, stop: anyio.Event) -> float:
    """Wait ``backoff`` (or until stopped); return the next, longer one."""
    with anyio.move_on_after(backoff):
        await stop.wait()
    return min(backoff * 2, MAX_BACKOFF_S)


async def _run_pipeline(
    settings: Settings,
    stop: anyio.Event,
    status: Status,
    pool: ExtractionPool,
    flow: Flow,
    *,
    metrics: Metrics,
    tracing: Tracing,
) -> None:
    # Stream sizes: each holds at most what fills one pool round or one batch; the
    # broker's prefetch bounds the total regardless.
    deliveries_in, deliveries_out = anyio.create_memory_object_stream[Delivery](
        settings.workers * settings.chunks_per_task
    )
    extracted_in, extracted_out = anyio.create_memory_object_stream[Extracted](
        settings.batch_max_chunks
    )
    settles_in, settles_out = anyio.create_memory_object_stream[Settle](settings.effective_prefetch)
    returns_in = settles_in.clone()  # the extractor's: chunks it could not extract
    async with AsyncExitStack() as stack:
        # Each actor closes its own ends when it finishes; these close whatever a
        # crash or cancellation left open.
        for end in (
            deliveries_in, deliveries_out, extracted_in, extracted_out,
            settles_in, returns_in, settles_out,
        ):  # fmt: skip
            stack.enter_context(end)
        # min_size=0: the writer opens the first connection itself, waiting out a
        # database that is not up yet instead of failing the pipeline. One
        # connection for each batch the writer commits at once, one for upkeep.
        db = await asyncpg.create_pool(
            settings.database_url,
            min_size=0,
            max_size=COMMITS_IN_FLIGHT + 1,
            init=init_connection,
            # Writes and upkeep hold locks and settings only for a transaction.
            reset=keep_session,
        )
        stack.push_async_callback(db.close)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain_deadline, stop, settings.drain_timeout_s, tg.cancel_scope)
            await tg.start(
                partial(
                    writer.run,
                    settings,
                    extracted_out,
                    settles_in,
                    pool=db,
                    flow=flow,
                    status=status,
                    metrics=metrics,
                    tracing=tracing,
                )
            )
            await tg.start(partial(upkeep.run, settings, pool=db))
            await tg.start(
                partial(
                    extractor.run, settings, deliveries_out, extracted_in, returns_in,
                    pool=pool, flow=flow, status=status, metrics=metrics, tracing=tracing,
                )
            )  # fmt: skip
            # Returns once drained: everything it handed on is committed and settled.
            await consumer.run(
                settings,
                deliveries_in,
                settles_out,
                stop=stop,
                cautious=True,
                flow=flow,
                status=status,
                metrics=metrics,
                tracing=tracing,
            )
            tg.cancel_scope.cancel()  # the drain deadline


async def _drain_deadline(stop: anyio.Event, limit_s: float, scope: anyio.CancelScope) -> None:
    await stop.wait()
    await anyio.sleep(limit_s)
    log.error("drain_timeout", timeout_s=limit_s, detail="unacked deliveries will be redelivered")
    scope.cancel()
