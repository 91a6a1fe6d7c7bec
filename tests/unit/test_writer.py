"""How the writer cuts batches: by chunks, by frames, by waiting, when it holds
everything handed on, and at the end."""

from __future__ import annotations

import anyio

from soundstream import config
from soundstream.core.records import Encoded, Extracted
from soundstream.ingest import writer
from soundstream.ingest.flow import Flow


def item(tag: int, frames: int) -> Extracted:
    return Extracted(tag, "s", tag, 0, 16000, 0, 0, Encoded(frames, 0, 0, b""))


def handed(n: int = 100) -> Flow:
    """A flow with ``n`` chunks handed on for extraction (more than any batch here)."""
    flow = Flow()
    flow.handed = n
    return flow


def settings(**values: int) -> config.Settings:
    return config.load(
        {},
        roles=frozenset({"ingest"}),
        **{"batch_max_chunks": 4, "batch_max_frames": 100, "batch_max_wait_ms": 50, **values},
    )


async def test_a_full_batch_is_cut_at_max_chunks() -> None:
    send, receive = anyio.create_memory_object_stream[Extracted](10)
    with send, receive:
        for tag in range(6):
            send.send_nowait(item(tag, 1))
        batch = await writer._collect(receive, settings(), handed())
    assert [e.tag for e in batch] == [0, 1, 2, 3]


async def test_a_batch_is_cut_once_it_holds_max_frames() -> None:
    send, receive = anyio.create_memory_object_stream[Extracted](10)
    with send, receive:
        for tag, frames in enumerate((60, 50, 10)):
            send.send_nowait(item(tag, frames))
        batch = await writer._collect(receive, settings(), handed())
    assert [e.tag for e in batch] == [0, 1]


async def test_a_partial_batch_waits_at_most_max_wait() -> None:
    send, receive = anyio.create_memory_object_stream[Extracted](10)
    with send, receive:
        send.send_nowait(item(0, 1))
        started = anyio.current_time()
        batch = await writer._collect(receive, settings(batch_max_wait_ms=100), handed())
        waited = anyio.current_time() - started
    assert [e.tag for e in batch] == [0]
    assert 0.09 <= waited < 1.0


async def test_a_closed_inbox_ends_with_what_is_left_then_nothing() -> None:
    send, receive = anyio.create_memory_object_stream[Extracted](10)
    with receive:
        with send:
            send.send_nowait(item(0, 1))
            send.send_nowait(item(1, 1))
        assert [e.tag for e in await writer._collect(receive, settings(), handed())] == [0, 1]
        assert await writer._collect(receive, settings(), handed()) == []


async def test_a_batch_holding_everything_handed_on_is_cut_without_waiting() -> None:
    send, receive = anyio.create_memory_object_stream[Extracted](10)
    with send, receive:
        send.send_nowait(item(0, 1))
        send.send_nowait(item(1, 1))
        started = anyio.current_time()
        batch = await writer._collect(receive, settings(batch_max_wait_ms=5000), handed(2))
        waited = anyio.current_time() - started
    assert [e.tag for e in batch] == [0, 1]
    assert waited < 1.0
