"""The consumer actor: the only owner of the broker connection.

It declares the topology, consumes with manual acks and a bounded prefetch, decodes
each message, sends good chunks on, dead-letters malformed ones (ack only after the
dead copy is confirmed), and acks what the writer reports committed.

Shutdown: when ``stop`` is set it cancels its consumer, forwards what it already
holds, closes its outbox and keeps acking until the writer closes the ack stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiormq
import anyio
import structlog
from aiormq.abc import DeliveredMessage
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pamqp.commands import Basic

from soundstream import wire
from soundstream.config import Settings
from soundstream.errors import Malformed
from soundstream.records import Delivery
from soundstream.status import Status

log = structlog.get_logger(__name__)
COMPONENT = "broker"


class BrokerGone(ConnectionError):
    """The connection or channel closed under us; the supervisor restarts the pipeline."""


async def declare_topology(channel: aiormq.abc.AbstractChannel, settings: Settings) -> None:
    """DESIGN.md section 3; every call is idempotent, so each replica makes them at start."""
    await channel.exchange_declare(settings.audio_exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(settings.queue, durable=True, arguments={"x-queue-type": "quorum"})
    await channel.queue_bind(
        settings.queue, settings.audio_exchange, routing_key=settings.binding_key
    )
    await channel.exchange_declare(settings.dead_exchange, exchange_type="fanout", durable=True)
    await channel.queue_declare(settings.dead_queue, durable=True)
    await channel.queue_bind(settings.dead_queue, settings.dead_exchange, routing_key="")


async def run(
    settings: Settings,
    outbox: MemoryObjectSendStream[Delivery],
    acks: MemoryObjectReceiveStream[int],
    stop: anyio.Event,
    status: Status,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    status.down(COMPONENT, "connecting")
    try:
        connection = await aiormq.connect(settings.amqp_url)
    except Exception as exc:
        status.down(COMPONENT, f"unreachable ({type(exc).__name__})")
        raise
    # The broker never has more than ``prefetch`` unacked deliveries out, so an inbox
    # of that size never fills: the callback can hand over without waiting.
    prefetch = settings.effective_prefetch
    inbox_in, inbox_out = anyio.create_memory_object_stream[DeliveredMessage](prefetch)

    async def on_message(message: DeliveredMessage) -> None:
        # Draining: the message stays unacked, so the broker redelivers it.
        with contextlib.suppress(anyio.ClosedResourceError):
            inbox_in.send_nowait(message)

    try:
        with inbox_in, inbox_out:
            channel = await connection.channel(publisher_confirms=True)
            await declare_topology(channel, settings)
            await channel.basic_qos(prefetch_count=prefetch)
            consume = await channel.basic_consume(settings.queue, on_message)
            status.up(COMPONENT)
            log.info("consuming", queue=settings.queue, prefetch=prefetch)
            task_status.started()

            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch, connection, channel)
                tg.start_soon(_stop_consuming, stop, channel, consume.consumer_tag, inbox_in)
                all_acked = anyio.Event()
                tg.start_soon(_ack_committed, channel, acks, all_acked)
                async with outbox:
                    async for message in inbox_out:
                        await _handle(message, channel, outbox, settings)
                # Everything is handed on; the writer closes ``acks`` once committed.
                await all_acked.wait()
                tg.cancel_scope.cancel()
    finally:
        status.down(COMPONENT, "disconnected")
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await connection.close()


async def _handle(
    message: DeliveredMessage,
    channel: aiormq.abc.AbstractChannel,
    outbox: MemoryObjectSendStream[Delivery],
    settings: Settings,
) -> None:
    props = message.header.properties
    tag = message.delivery_tag
    assert tag is not None
    try:
        chunk = wire.decode(props.content_type, props.headers, message.body, props.message_id)
    except Malformed as exc:
        await _dead_letter(channel, message, exc.reason, settings)
        await channel.basic_ack(tag)
        return
    await outbox.send(Delivery(tag, chunk, time.time_ns() // 1000))


async def _dead_letter(
    channel: aiormq.abc.AbstractChannel,
    message: DeliveredMessage,
    reason: str,
    settings: Settings,
) -> None:
    props = message.header.properties
    headers: dict[str, Any] = dict(props.headers or {})
    headers["x-error"] = reason
    headers["x-original-routing-key"] = message.routing_key or ""
    copy = Basic.Properties(
        content_type=props.content_type,
        message_id=props.message_id,
        delivery_mode=2,
        headers=headers,
        timestamp=props.timestamp,
    )
    confirmation = await channel.basic_publish(
        message.body, exchange=settings.dead_exchange, routing_key="", properties=copy
    )
    if not isinstance(confirmation, Basic.Ack):
        # Not acked: the original stays unacked and the pipeline restarts.
        raise BrokerGone(f"dead-letter copy not confirmed: {confirmation!r}")
    log.warning(
        "message_dead_lettered",
        message_id=props.message_id,
        routing_key=message.routing_key,
        reason=reason,
    )


async def _ack_committed(
    channel: aiormq.abc.AbstractChannel, acks: MemoryObjectReceiveStream[int], done: anyio.Event
) -> None:
    async with acks:
        async for tag in acks:
            await channel.basic_ack(tag)
    done.set()


async def _stop_consuming(
    stop: anyio.Event,
    channel: aiormq.abc.AbstractChannel,
    consumer_tag: str | None,
    inbox: MemoryObjectSendStream[DeliveredMessage],
) -> None:
    await stop.wait()
    log.info("draining")
    if consumer_tag is not None:
        with anyio.move_on_after(5):
            await channel.basic_cancel(consumer_tag)
    # Deliveries already in the inbox are still handed on and acked after commit.
    inbox.close()


async def _watch(
    connection: aiormq.abc.AbstractConnection, channel: aiormq.abc.AbstractChannel
) -> None:
    """Turn a dropped connection or channel into an error the supervisor sees."""
    closing = [asyncio.ensure_future(connection.closing), asyncio.ensure_future(channel.closing)]
    try:
        await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in closing:
            future.cancel()
    raise BrokerGone("connection to the broker closed")
