"""Handing items from one actor to the next without a trip round the event loop each.

anyio's ``send`` and ``receive`` on a memory stream yield to the event loop before
anything else, even when the item could go or come at once. Between actors that
pass hundreds of items a second, each yield waits behind every other ready task
(the AMQP client's, the pool's, the writer's), so a batch of 128 taken one
``receive`` at a time took tens of milliseconds while every core idled. These
helpers move what is ready at once and wait only when they must; an actor that
loops on them still yields whenever its stream runs empty or full.
"""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


async def put(stream: MemoryObjectSendStream[T], item: T) -> None:
    """Send ``item``; wait only if the stream is full."""
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def take(stream: MemoryObjectReceiveStream[T]) -> T:
    """The next item; wait only if none is there. Raises ``EndOfStream`` once the
    stream is closed and empty."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()


def take_ready(stream: MemoryObjectReceiveStream[T], limit: int) -> list[T]:
    """Up to ``limit`` items that are there now, without waiting."""
    items: list[T] = []
    while len(items) < limit:
        try:
            items.append(stream.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return items


async def take_before(stream: MemoryObjectReceiveStream[T], deadline: float) -> T | None:
    """The next item, waiting no later than ``deadline`` (``anyio.current_time()``);
    None once it has passed or the stream is closed and empty."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        pass
    except anyio.EndOfStream:
        return None
    with anyio.move_on_after(deadline - anyio.current_time()):
        try:
            return await stream.receive()
        except anyio.EndOfStream:
            return None
    return None
