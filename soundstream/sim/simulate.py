"""``soundstream simulate``: publish audio as N sensors, for demos and load tests.

Each sensor sends its stream in chunks per DESIGN.md section 2: synthetic signals
(``soundstream.signals``) as ``audio/pcm``, or one WAV file, looped as needed and cut
into chunks that are each sent as a complete ``audio/wav`` file.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import aiormq
import anyio
import numpy as np
from aiormq.abc import AbstractChannel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pamqp.commands import Basic
from tqdm import tqdm

from soundstream.config import Settings
from soundstream.core import wav, wire
from soundstream.errors import Malformed, SoundstreamError
from soundstream.observe.tracing import TRACEPARENT
from soundstream.sim.signals import SensorSignal

# Unconfirmed publishes in flight: enough to keep the broker busy while it confirms,
# few enough that memory stays bounded (at most this many chunk bodies).
WINDOW = 256
CLOSE_TIMEOUT_S = 5.0
PERSISTENT = 2


class PublishRefused(SoundstreamError):
    """The broker nacked a publish, e.g. a queue at its length limit with reject-publish."""


@dataclass(frozen=True)
class SimulateOptions:
    sensors: int
    seconds: float
    wav: Path | None = None
    realtime: bool = False
    chunk_ms: int = 1000
    encoding: str = "s16le"  # of audio/pcm bodies; a WAV keeps its own
    # Default ``sim-HHMMSS`` of the start time: the service deduplicates on
    # (sensor_id, seq), so a second run must not reuse the first run's ids.
    sensor_prefix: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class Summary:
    chunks: int  # confirmed by the broker
    bytes: int  # of message bodies
    seconds: float  # from the first publish to the last confirmation

    @property
    def msg_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"published {self.chunks} chunks ({self.bytes / 1e6:.1f} MB) "
            f"in {self.seconds:.1f} s: {self.msg_per_s:.0f} msg/s"
        )


@dataclass(frozen=True)
class _Sensor:
    """One simulated sensor: where its samples come from and how they are sent."""

    sensor_id: str
    sample_rate: int
    channels: int
    encoding: str
    as_wav: bool
    chunk_samples: int
    total_samples: int
    read: Callable[[int, int], np.ndarray]  # (first sample, count) -> samples

    def span(self, k: int) -> tuple[int, int]:
        """First sample and sample count of chunk ``k``; only the last one is short."""
        start = k * self.chunk_samples
        return start, min(self.chunk_samples, max(1, self.total_samples - start))

    def time_ns(self, t0: int, sample: int) -> int:
        # From the sample offset, so chunk durations that are not a whole number of
        # nanoseconds never accumulate rounding error.
        return t0 + sample * 10**9 // self.sample_rate

    def end_ns(self, t0: int, k: int) -> int:
        """When the last sample of chunk ``k`` is over."""
        start, count = self.span(k)
        return self.time_ns(t0, start + count)


@dataclass(frozen=True)
class _Outgoing:
    routing_key: str
    body: bytes
    properties: Basic.Properties


async def simulate(settings: Settings, options: SimulateOptions) -> Summary:
    """Publish ``options.seconds`` of audio from each of ``options.sensors`` sensors.

    Chunks go to ``settings.audio_exchange``, declared first (topic, durable, as the
    service does) so this works before the service ever ran. The exchange does not
    keep messages: with no queue bound to it, everything published is dropped. Start
    the service once, or bind a queue, before simulating.

    Chunk k of every sensor starts at ``t0 + k * chunk duration``, t0 being the start
    time. Sensors are interleaved (chunk 0 of each, then chunk 1, ...). Without
    ``realtime`` chunks go out as fast as the broker confirms them, with up to
    ``WINDOW`` unconfirmed; with it, chunk k goes out when the wall clock reaches its
    end. Returns once every chunk is confirmed. Raises ``ValueError`` for bad options,
    ``Malformed`` for an unusable WAV file and ``PublishRefused`` when the broker nacks.
    """
    _check(options)
    t0, t0_mono = time.time_ns(), time.monotonic_ns()
    prefix = options.sensor_prefix or datetime.fromtimestamp(t0 / 1e9).strftime("sim-%H%M%S")
    ids = [f"{prefix}-{i:03d}" for i in range(options.sensors)]
    if not all(wire.valid_sensor_id(i) for i in ids):
        raise ValueError(f"sensor ids like {ids[-1]!r} must match [A-Za-z0-9._-]{{1,64}}")
    if options.wav is None:
        sensors = _synthetic(ids, options)
    else:
        sensors = _from_wav(ids, options.wav, options)
    # Whole microseconds: float seconds like 0.7 * 1000 do not divide evenly.
    total_us, chunk_us = round(options.seconds * 1e6), options.chunk_ms * 1000
    chunks = -(-total_us // chunk_us)

    connection = await aiormq.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.exchange_declare(settings.audio_exchange, exchange_type="topic", durable=True)
        published, size = 0, 0
        with tqdm(
            total=len(sensors) * chunks,
            unit="chunk",
            file=sys.stderr,
            disable=None if options.progress else True,  # None: off when not a TTY
        ) as bar:

            def confirmed(message: _Outgoing) -> None:
                nonlocal published, size
                published += 1
                size += len(message.body)
                bar.update(1)

            started = time.perf_counter()
            produce = partial(
                _produce,
                sensors=sensors,
                chunks=chunks,
                t0=t0,
                t0_mono=t0_mono,
                realtime=options.realtime,
            )
            await _publish_all(channel, settings.audio_exchange, produce, confirmed)
        return Summary(published, size, time.perf_counter() - started)
    finally:
        # Also on Ctrl-C or cancellation: say goodbye to the broker, but not forever.
        with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await connection.close()


def _check(options: SimulateOptions) -> None:
    if options.sensors < 1:
        raise ValueError(f"sensors must be at least 1, got {options.sensors}")
    if not options.seconds > 0:
        raise ValueError(f"seconds must be positive, got {options.seconds}")
    if options.chunk_ms < 1:
        raise ValueError(f"chunk_ms must be at least 1, got {options.chunk_ms}")
    if options.encoding not in wire.ENCODINGS:
        raise ValueError(f"encoding must be s16le or f32le, got {options.encoding!r}")


def _synthetic(ids: list[str], options: SimulateOptions) -> list[_Sensor]:
    sensors = []
    for index, sensor_id in enumerate(ids):
        signal = SensorSignal.for_sensor(index)
        rate = signal.sample_rate
        sensors.append(
            _checked(
                _Sensor(
                    sensor_id,
                    rate,
                    signal.channels,
                    options.encoding,
                    as_wav=False,
                    chunk_samples=max(1, round(rate * options.chunk_ms / 1000)),
                    total_samples=round(options.seconds * rate),
                    read=signal.samples,
                )
            )
        )
    return sensors


def _from_wav(ids: list[str], path: Path, options: SimulateOptions) -> list[_Sensor]:
    audio = wav.parse(path.read_bytes())
    rate = audio.sample_rate
    if not wire.MIN_RATE <= rate <= wire.MAX_RATE:
        raise Malformed(f"wav: sample rate {rate} outside {wire.MIN_RATE}..{wire.MAX_RATE}")
    dtype = wire.ENCODINGS[audio.encoding]
    block = dtype.itemsize * audio.channels
    whole = len(audio.data) // block * block  # ignore a torn last frame
    # Exact for s16le: wav.build multiplies by 32768 again, so samples arrive unchanged.
    frames = wire.to_frames(audio.data[:whole], dtype, audio.channels)
    if not len(frames):
        raise Malformed(f"wav: {path} holds no samples")

    def read(start: int, count: int) -> np.ndarray:
        # mode="wrap" loops the file when the run is longer than the recording.
        return np.take(frames, np.arange(start, start + count), axis=0, mode="wrap")

    # Every sensor sends the same recording under its own id.
    chunk_samples = max(1, round(rate * options.chunk_ms / 1000))
    total = round(options.seconds * rate)
    return [
        _checked(
            _Sensor(sid, rate, audio.channels, audio.encoding, True, chunk_samples, total, read)
        )
        for sid in ids
    ]


def _checked(sensor: _Sensor) -> _Sensor:
    # 44 bytes: the RIFF, fmt and data headers wav.build writes.
    size = sensor.chunk_samples * sensor.channels * wire.ENCODINGS[sensor.encoding].itemsize + 44
    if size > wire.MAX_BODY_BYTES:
        raise ValueError(
            f"chunks of {sensor.chunk_samples} samples at {sensor.sample_rate} Hz are "
            f"{size} bytes, over the {wire.MAX_BODY_BYTES}-byte limit; use a shorter chunk_ms"
        )
    return sensor


async def _produce(
    send: MemoryObjectSendStream[_Outgoing],
    *,
    sensors: list[_Sensor],
    chunks: int,
    t0: int,
    t0_mono: int,
    realtime: bool,
) -> None:
    """Chunk 0 of every sensor, then chunk 1, ...; with ``realtime`` each round waits
    until its last sample is in the past."""
    async with send:
        for k in range(chunks):
            if realtime:
                # Sleep on the monotonic clock (t0_mono is t0 there): a wall-clock step
                # must neither stall the run nor rush it.
                end = max(sensor.end_ns(t0, k) for sensor in sensors)
                await anyio.sleep(max(0.0, (t0_mono + end - t0 - time.monotonic_ns()) / 1e9))
            for sensor in sensors:
                await send.send(_message(sensor, k, t0))


def _message(sensor: _Sensor, k: int, t0: int) -> _Outgoing:
    start, count = sensor.span(k)
    samples = sensor.read(start, count)
    start_ns = sensor.time_ns(t0, start)
    if sensor.as_wav:
        content_type = wire.WAV
        body = wav.build(samples, sensor.sample_rate, sensor.encoding)
        headers = wire.headers_for(sensor.sensor_id, k, start_ns)
    else:
        content_type = wire.PCM
        body = wire.encode_pcm(samples, sensor.encoding)
        headers = wire.headers_for(
            sensor.sensor_id,
            k,
            start_ns,
            sample_rate=sensor.sample_rate,
            encoding=sensor.encoding,
            channels=sensor.channels,
        )
    # Each chunk starts a trace of its own, as an instrumented sensor's publish
    # would: the service continues it (W3C trace context, sampled).
    headers[TRACEPARENT] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    properties = Basic.Properties(
        content_type=content_type,
        headers=headers,
        message_id=wire.message_id(sensor.sensor_id, k),
        delivery_mode=PERSISTENT,
    )
    return _Outgoing(wire.routing_key(sensor.sensor_id), body, properties)


async def _publish_all(
    channel: AbstractChannel,
    exchange: str,
    produce: Callable[[MemoryObjectSendStream[_Outgoing]], Awaitable[None]],
    confirmed: Callable[[_Outgoing], None],
) -> None:
    """Publish what ``produce`` sends, with at most ``WINDOW`` confirmations outstanding.

    A fixed pool of publishers takes messages from an unbuffered stream, so ``produce``
    waits whenever every publisher is waiting for its confirmation.
    """
    send, receive = anyio.create_memory_object_stream[_Outgoing]()

    async def publisher(inbox: MemoryObjectReceiveStream[_Outgoing]) -> None:
        async with inbox:
            async for message in inbox:
                await _publish(channel, exchange, message)
                confirmed(message)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(WINDOW):
                tg.start_soon(publisher, receive.clone())
            receive.close()
            await produce(send)
    except ExceptionGroup as group:
        # When the connection drops, every publisher fails the same way; one says it.
        raise group.exceptions[0] from None


async def _publish(channel: AbstractChannel, exchange: str, message: _Outgoing) -> None:
    try:
        confirmation = await channel.basic_publish(
            message.body,
            exchange=exchange,
            routing_key=message.routing_key,
            properties=message.properties,
        )
    except aiormq.exceptions.DeliveryError as exc:
        raise PublishRefused(f"broker refused {message.properties.message_id}") from exc
    if not isinstance(confirmation, Basic.Ack):
        raise PublishRefused(f"broker refused {message.properties.message_id}: {confirmation!r}")
