"""Helpers for tests that run the real service against the real broker and database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiormq
import anyio
import asyncpg
import httpx
import numpy as np
from pamqp.commands import Basic

from soundstream import supervisor
from soundstream.config import Settings
from soundstream.core import wire

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def tone(
    seconds: float, rate: int, freqs: tuple[float, ...] = (440.0, 1250.0), seed: int = 0
) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    signal = sum(0.3 * np.sin(2 * np.pi * f * t) for f in freqs) + 0.01 * rng.standard_normal(
        len(t)
    )
    return np.asarray(signal, dtype=np.float32)


@dataclass
class Service:
    port: int
    stop: anyio.Event
    settings: Settings

    async def get(self, path: str, **params: Any) -> httpx.Response:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}", timeout=10
        ) as client:
            return await client.get(path, params=params)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """The whole service in this event loop; drained (stop set) on exit."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        port = await tg.start(supervisor.serve, settings, stop)
        service = Service(port, stop, settings)
        await wait_for(lambda: _ready(service), within=30)
        try:
            yield service
        finally:
            stop.set()


async def _ready(service: Service) -> bool:
    return (await service.get("/readyz")).status_code == 200


async def wait_for(check: Callable[[], Awaitable[bool]], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within} s")
        await anyio.sleep(0.1)


@asynccontextmanager
async def channel(url: str) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def publish(
    ch: aiormq.abc.AbstractChannel,
    exchange: str,
    body: bytes,
    headers: dict[str, Any],
    *,
    content_type: str | None = "audio/pcm",
    message_id: str | None = None,
    routing_key: str | None = None,
) -> None:
    sensor = str(headers.get("sensor_id", "unknown"))
    confirmation = await ch.basic_publish(
        body,
        exchange=exchange,
        routing_key=routing_key or f"sensor.{sensor if wire.valid_sensor_id(sensor) else 'bad'}",
        properties=Basic.Properties(
            content_type=content_type,
            message_id=message_id,
            delivery_mode=2,
            headers=headers,
        ),
    )
    assert isinstance(confirmation, Basic.Ack)


async def publish_pcm(
    ch: aiormq.abc.AbstractChannel,
    exchange: str,
    sensor_id: str,
    seq: int,
    samples: np.ndarray,
    rate: int,
    *,
    start_ns: int = START_NS,
    encoding: str = "s16le",
    channels: int = 1,
) -> None:
    frames = np.repeat(samples[:, None], channels, axis=1) if channels == 2 else samples
    await publish(
        ch,
        exchange,
        wire.encode_pcm(frames, encoding),
        wire.headers_for(
            sensor_id, seq, start_ns, sample_rate=rate, encoding=encoding, channels=channels
        ),
        message_id=wire.message_id(sensor_id, seq),
    )


async def stored_chunks(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM chunks"))
    finally:
        await conn.close()


async def stored_at_least(database_url: str, n: int) -> bool:
    return await stored_chunks(database_url) >= n


async def publish_series(
    ch: aiormq.abc.AbstractChannel,
    exchange: str,
    sensor_id: str,
    seqs: Iterable[int],
    *,
    seconds: float = 0.5,
    rate: int = 16000,
    start_ns: int = START_NS,
) -> None:
    """Consecutive chunks of one sensor: chunk ``seq`` starts ``seq * seconds`` in."""
    for seq in seqs:
        samples = tone(seconds, rate, seed=seq)
        start = start_ns + round(seq * seconds * 1e9)
        await publish_pcm(ch, exchange, sensor_id, seq, samples, rate, start_ns=start)


async def queue_depth(ch: aiormq.abc.AbstractChannel, queue: str) -> int:
    declared = await ch.queue_declare(queue, passive=True)
    return int(declared.message_count or 0)


async def tcp_proxy(
    listen_port: int, target_port: int, *, task_status: Any = anyio.TASK_STATUS_IGNORED
) -> None:
    """Forward 127.0.0.1:listen_port to 127.0.0.1:target_port until cancelled.

    Lets a test make a dependency appear (start the proxy) after the service started.
    """

    async def pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        try:
            async for data in source:
                await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()

    async def handle(client: anyio.abc.SocketStream) -> None:
        upstream = await anyio.connect_tcp("127.0.0.1", target_port)
        async with client, upstream, anyio.create_task_group() as tg:
            tg.start_soon(pipe, client, upstream)
            tg.start_soon(pipe, upstream, client)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=listen_port)
    async with listener:
        task_status.started()
        await listener.serve(handle)
