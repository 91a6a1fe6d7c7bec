"""A sensor's AMQP client for Locust: pika's BlockingConnection with publisher confirms.

Locust runs every user as a greenlet on gevent's monkey-patched sockets, where pika's
blocking adapter waits cooperatively: one connection per sensor user, and
``publish`` returns only once the broker confirmed the message (or raises).
"""

from __future__ import annotations

import contextlib

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from loadtest.sensors import PERSISTENT, Chunk


class PublishRefused(Exception):
    """The broker nacked the message or could not route it to any queue."""


class Publisher:
    """One AMQP connection and channel in confirm mode, opened on demand."""

    def __init__(self, url: str, exchange: str, *, name: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.exchange = exchange
        self.name = name  # shown in the broker's connection list
        self.timeout_s = timeout_s
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.is_open

    def connect(self) -> None:
        """Open the connection and check that the exchange exists (a wrong name fails
        here, not as a closed channel on the first publish)."""
        self.close()
        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.name}
        params.socket_timeout = self.timeout_s
        params.stack_timeout = self.timeout_s
        # A broker alarm blocks publishing connections: give up on it instead of
        # waiting for ever (the next chunk connects again).
        params.blocked_connection_timeout = self.timeout_s
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.exchange_declare(self.exchange, passive=True)
        except BaseException:
            _close_quietly(connection)
            raise
        self._connection, self._channel = connection, channel

    def publish(self, chunk: Chunk) -> None:
        """Publish ``chunk`` persistently and wait for the broker's confirm.

        ``mandatory``: a chunk no queue takes (the service's queue is not bound to
        this exchange) comes back as a failure instead of vanishing.
        """
        if self._channel is None:
            raise pika.exceptions.AMQPConnectionError("not connected")
        properties = pika.BasicProperties(
            content_type=chunk.content_type,
            message_id=chunk.message_id,
            delivery_mode=PERSISTENT,
            headers=chunk.headers,
        )
        try:
            self._channel.basic_publish(
                self.exchange, chunk.routing_key, chunk.body, properties, mandatory=True
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            raise PublishRefused(f"{type(exc).__name__}: {chunk.message_id}") from exc

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            _close_quietly(connection)


def _close_quietly(connection: pika.BlockingConnection) -> None:
    # Closing a connection that already failed raises again; it is gone either way.
    with contextlib.suppress(Exception):
        if connection.is_open:
            connection.close()
