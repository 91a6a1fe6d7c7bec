"""The consumer actor: the only owner of the broker connections.

It declares the topology, consumes with manual acks and a bounded prefetch, decodes
each message, sends good chunks on, dead-letters malformed ones (ack only after the
dead copy is confirmed), and settles what the other actors report: an ack once the
rows are committed, or a return to the queue for a chunk extraction cannot get past.

A run that starts ``cautious`` takes one delivery at a time until the first message
that was not delivered before: a restart puts the deliveries the last run held back
in the queue, and one of them may be what crashed it. One at a time, a message that
crashes the pipeline again (even by breaking the AMQP client's own frame decoding)
takes no other message's delivery count with it, and the broker dead-letters it at
the delivery limit.

Shutdown: when ``stop`` is set it cancels its consumer, forwards what it already
holds, closes its outbox and keeps settling until every sender of settlements closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from typing import Any, cast

import aiormq
import anyio
import structlog
from aiormq.abc import DeliveredMessage
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pamqp.commands import Basic

from soundstream.config import Settings
from soundstream.core import wire
from soundstream.core.records import Delivery, Settle
from soundstream.errors import Malformed, TopologyMismatch
from soundstream.failures import unavailable
from soundstream.ingest import handoff
from soundstream.ingest.deadcopy import dead_letter_headers
from soundstream.ingest.flow import Flow
from soundstream.observe.metrics import Metrics, QueueState
from soundstream.observe.tracing import Tracing, trace_id_of
from soundstream.status import Status

log = structlog.get_logger(__name__)
COMPONENT = "broker"
# How often the queue's depth and consumers are asked of the broker (a passive
# declare: one small round trip).
QUEUE_POLL_S = 5.0


class BrokerGone(ConnectionError):
    """The connection or channel closed under us; the supervisor restarts the pipeline."""


def queue_arguments(settings: Settings) -> dict[str, Any]:
    """DESIGN.md section 3: a quorum queue whose messages reach the dead exchange once
    returned more than ``delivery_limit`` times, at least once (which RabbitMQ allows only together
    with ``reject-publish`` overflow)."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.dead_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_topology(channel: aiormq.abc.AbstractChannel, settings: Settings) -> None:
    """DESIGN.md section 3; every call is idempotent, so each replica makes them at start.

    A queue or exchange that exists with other arguments (an older version declared
    it) makes the broker close the channel with PRECONDITION_FAILED: that becomes one
    ``TopologyMismatch`` saying which and what to do, not a restart loop.
    """
    dead: dict[str, Any] = {"x-queue-type": "quorum"}
    steps: list[tuple[str, str, str, Any]] = [
        ("exchange", "DEAD_EXCHANGE", settings.dead_exchange, lambda: channel.exchange_declare(
            settings.dead_exchange, exchange_type="fanout", durable=True)),
        ("queue", "DEAD_QUEUE", settings.dead_queue, lambda: channel.queue_declare(
            settings.dead_queue, durable=True, arguments=dead)),
        ("exchange", "AUDIO_EXCHANGE", settings.audio_exchange, lambda: channel.exchange_declare(
            settings.audio_exchange, exchange_type="topic", durable=True)),
        ("queue", "QUEUE", settings.queue, lambda: channel.queue_declare(
            settings.queue, durable=True, arguments=queue_arguments(settings))),
    ]  # fmt: skip
    for kind, variable, name, declare in steps:
        try:
            await declare()
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyMismatch(
                f"{kind} {name!r} exists on the broker with other arguments than this "
                f"version declares ({exc}); to upgrade, set SOUNDSTREAM_{variable} to a new "
                f"name, or drain the old {kind} and delete it (rabbitmqctl delete_{kind} "
                f"{name}): see 'Upgrading the queues' in the README"
            ) from None
    await channel.queue_bind(
        settings.queue, settings.audio_exchange, routing_key=settings.binding_key
    )
    await channel.queue_bind(settings.dead_queue, settings.dead_exchange, routing_key="")


async def run(
    settings: Settings,
    outbox: MemoryObjectSendStream[Delivery],
    settles: MemoryObjectReceiveStream[Settle],
    *,
    stop: anyio.Event,
    status: Status,
    flow: Flow,
    metrics: Metrics,
    tracing: Tracing,
    cautious: bool = False,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    status.down(COMPONENT, "connecting")
    async with AsyncExitStack() as stack:
        try:
            connection = await aiormq.connect(settings.amqp_url)
            stack.push_async_callback(_close, connection)
            # Dead copies go out on a connection of their own: RabbitMQ blocks a
            # connection that publishes while an alarm is on, and the client then holds
            # back every frame on it, acks included. Consuming never waits on that.
            publisher = await aiormq.connect(settings.amqp_url)
            stack.push_async_callback(_close, publisher)
        except Exception as exc:
            status.down(COMPONENT, f"unreachable ({type(exc).__name__})")
            raise
        stack.callback(status.down, COMPONENT, "disconnected")
        channel = await connection.channel()
        await declare_topology(channel, settings)
        dead_channel = await publisher.channel(publisher_confirms=True)
        subscription = _Subscription(
            settings,
            channel,
            dead_channel,
            flow,
            metrics=metrics,
            tracing=tracing,
            cautious=cautious,
        )
        with subscription.inbox_in, subscription.inbox_out:
            await subscription.start()
            status.up(COMPONENT)
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch, connection, publisher, channel, dead_channel)
                tg.start_soon(_poll_queue, connection, settings.queue, metrics)
                if cautious:
                    tg.start_soon(subscription.widen)
                tg.start_soon(subscription.stop_when, stop)
                all_settled = anyio.Event()
                tg.start_soon(subscription.settle, settles, all_settled)
                async with outbox:
                    while True:
                        try:
                            message = await handoff.take(subscription.inbox_out)
                        except anyio.EndOfStream:
                            break
                        await subscription.handle(message, outbox)
                # Everything is handed on; the settlements' senders close once done.
                await all_settled.wait()
                tg.cancel_scope.cancel()


async def _close(connection: aiormq.abc.AbstractConnection) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        await connection.close()


class _Subscription:
    """One run's consumer on the queue: what arrives, and how each delivery is settled."""

    def __init__(
        self,
        settings: Settings,
        channel: aiormq.abc.AbstractChannel,
        dead_channel: aiormq.abc.AbstractChannel,
        flow: Flow,
        *,
        metrics: Metrics,
        tracing: Tracing,
        cautious: bool,
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.dead_channel = dead_channel
        self.flow = flow
        self.metrics = metrics
        self.tracing = tracing
        self.cautious = cautious
        self.prefetch = settings.effective_prefetch
        # The broker never has more than ``prefetch`` unacked deliveries out (plus the
        # one a cautious consumer may still hold while the wide one starts), so an inbox
        # of that size never fills: the callback can hand over without waiting.
        self.inbox_in, self.inbox_out = anyio.create_memory_object_stream[DeliveredMessage](
            self.prefetch + 1
        )
        self.fresh = anyio.Event()
        self.tag = ""

    async def start(self) -> None:
        window = 1 if self.cautious else self.prefetch
        await self._consume(window)
        log.info("consuming", queue=self.settings.queue, prefetch=window)

    async def _consume(self, window: int) -> None:
        self.flow.window = window
        await self.channel.basic_qos(prefetch_count=window)
        consume = await self.channel.basic_consume(self.settings.queue, self._on_message)
        self.tag = str(consume.consumer_tag)

    async def _on_message(self, message: DeliveredMessage) -> None:
        assert message.delivery_tag is not None
        self.flow.unsettled.add(message.delivery_tag, len(message.body))
        self.metrics.chunks_consumed.inc()
        if message.redelivered:
            self.metrics.chunks_redelivered.inc()
        else:
            self.fresh.set()
        try:
            self.inbox_in.send_nowait(message)
        except anyio.ClosedResourceError:
            # Draining: the message stays unacked, so the broker redelivers it.
            self.flow.unsettled.discard(message.delivery_tag)

    async def widen(self) -> None:
        """Past what earlier runs held (a message not delivered before): back to the
        full prefetch. A prefetch applies to consumers started after it, so start a
        new consumer (the old one's deliveries stay ours to settle), cancel the old."""
        await self.fresh.wait()
        old = self.tag
        await self._consume(self.prefetch)
        await self.channel.basic_cancel(old)
        log.info("consuming", queue=self.settings.queue, prefetch=self.prefetch)

    async def stop_when(self, stop: anyio.Event) -> None:
        await stop.wait()
        log.info("draining")
        with anyio.move_on_after(5):
            await self.channel.basic_cancel(self.tag)
        # Deliveries already in the inbox are still handed on and acked after commit.
        self.inbox_in.close()

    async def handle(
        self, message: DeliveredMessage, outbox: MemoryObjectSendStream[Delivery]
    ) -> None:
        tag = message.delivery_tag
        assert tag is not None
        received_ns = time.time_ns()
        try:
            chunk = decode(message, self.settings)
        except Malformed as exc:
            headers = message.header.properties.headers
            with structlog.contextvars.bound_contextvars(
                delivery_tag=tag, trace_id=trace_id_of(headers)
            ):
                await self._reject(message, tag, exc)
            return
        span = None
        if self.tracing.enabled:
            attributes = {
                "messaging.system": "rabbitmq",
                "messaging.destination.name": self.settings.queue,
                "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
                "soundstream.sensor_id": chunk.sensor_id,
                "soundstream.seq": chunk.seq,
            }
            headers = message.header.properties.headers
            span = self.tracing.chunk(headers, attributes, received_ns)
        self.flow.handed += 1
        await handoff.put(outbox, Delivery(tag, chunk, received_ns // 1000, span))

    async def _reject(self, message: DeliveredMessage, tag: int, exc: Malformed) -> None:
        self.flow.unsettled.discard(tag)
        if await _dead_letter(self.dead_channel, message, exc.reason, self.settings):
            self.metrics.chunks_dead_lettered.labels(exc.part).inc()
            await self.channel.basic_ack(tag)
        else:
            await self.channel.basic_nack(tag, requeue=True)

    async def settle(self, settles: MemoryObjectReceiveStream[Settle], done: anyio.Event) -> None:
        """Settle deliveries as they are reported, whatever is waiting at once: the
        returns one by one, the acks as one ``multiple`` ack where the tags allow."""
        async with settles:
            async for first in settles:
                batch = [first]
                while True:
                    try:
                        batch.append(settles.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                acks = []
                for settle in batch:
                    if settle.requeue:
                        self.flow.unsettled.discard(settle.tag)
                        await self.channel.basic_nack(settle.tag, requeue=True)
                    else:
                        acks.append(settle.tag)
                upto, singles = self.flow.unsettled.ack(acks)
                if upto is not None:
                    await self.channel.basic_ack(upto, multiple=True)
                for tag in singles:
                    await self.channel.basic_ack(tag)
        done.set()


def decode(message: DeliveredMessage, settings: Settings) -> wire.Chunk:
    """The chunk a delivered message carries, or ``Malformed``: the properties as the
    client decoded them, the routing key (a delivery without one fails the rule) and
    the deployment's body limit."""
    props = message.header.properties
    return wire.decode(
        props.content_type,
        props.headers,
        message.body,
        props.message_id,
        routing_key=message.routing_key or "",
        max_body=settings.max_body_bytes,
    )


async def _dead_letter(
    channel: aiormq.abc.AbstractChannel,
    message: DeliveredMessage,
    reason: str,
    settings: Settings,
) -> bool:
    """Publish the dead copy; True once the broker confirmed it."""
    props = message.header.properties
    copy = Basic.Properties(
        content_type=props.content_type,
        message_id=props.message_id,
        delivery_mode=2,
        headers=cast(Any, dead_letter_headers(props.headers, reason, message.routing_key)),
        timestamp=props.timestamp,
    )
    confirmation: object = None
    with contextlib.suppress(TimeoutError):
        confirmation = await channel.basic_publish(
            message.body,
            exchange=settings.dead_exchange,
            routing_key="",
            properties=copy,
            timeout=settings.dead_letter_timeout_s,
        )
    if not isinstance(confirmation, Basic.Ack):
        # The original goes back to the queue (the broker counts the delivery) and
        # is tried again; a second dead copy may result: they are at least once.
        log.warning(
            "dead_letter_unconfirmed",
            message_id=props.message_id,
            confirmation=repr(confirmation) if confirmation else "timed out",
        )
        return False
    log.warning(
        "message_dead_lettered",
        message_id=props.message_id,
        routing_key=message.routing_key,
        reason=reason,
    )
    return True


async def _poll_queue(
    connection: aiormq.abc.AbstractConnection, queue: str, metrics: Metrics
) -> None:
    """Ask the broker for the queue's depth and consumers every ``QUEUE_POLL_S``, on a
    channel of its own (a failed declare closes only that channel); a failed poll
    leaves the last figures standing and is tried again on a new channel."""
    channel: aiormq.abc.AbstractChannel | None = None
    while True:
        try:
            if channel is None or channel.is_closed:
                channel = await connection.channel()
            declared = await channel.queue_declare(queue, passive=True)
            metrics.queue = QueueState(declared.message_count or 0, declared.consumer_count or 0)
        except Exception as exc:
            if connection.is_closed:
                return  # the pipeline is restarting; its next run polls again
            log.warning("queue_poll_failed", error=str(exc) or type(exc).__name__)
            channel = None
        await anyio.sleep(QUEUE_POLL_S)


async def _watch(*closables: Any) -> None:
    """Turn a closed connection or channel into the error the supervisor acts on.

    The ``closing`` futures belong to aiormq: wait for them, never cancel them (a
    cancelled one makes ``connection.close()`` a no-op and leaves the old consumer
    holding its deliveries until the heartbeat times out).
    """
    futures = [closable.closing for closable in closables]
    closed = anyio.Event()

    def on_done(_: asyncio.Future[Any]) -> None:
        closed.set()

    for future in futures:
        future.add_done_callback(on_done)
    try:
        await closed.wait()
    finally:
        for future in futures:
            future.remove_done_callback(on_done)
    reason = next(
        (
            f.exception()
            for f in futures
            if f.done() and not f.cancelled() and f.exception() is not None
        ),
        None,
    )
    if reason is None or unavailable(reason):
        raise BrokerGone(f"connection to the broker closed: {reason}") from reason
    # Not about reachability (a protocol error, a frame that cannot be decoded):
    # the failure itself is the crash's reason.
    raise reason
