"""``simulate`` against the real broker: publish into a per-test exchange with a bound
queue, then take every message back and check it against DESIGN.md section 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiormq
import anyio
import numpy as np
import pytest
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic
from testenv import AMQP_URL

from soundstream import config
from soundstream.config import Settings
from soundstream.core import wav, wire
from soundstream.sim.signals import SensorSignal
from soundstream.sim.simulate import SimulateOptions, Summary, simulate


@dataclass
class Broker:
    settings: Settings
    channel: AbstractChannel
    queue: str

    async def take_all(self) -> list[DeliveredMessage]:
        messages: list[DeliveredMessage] = []
        while True:
            message = await self.channel.basic_get(self.queue, no_ack=True)
            if isinstance(message.delivery, Basic.GetEmpty):
                return messages
            messages.append(message)


@pytest.fixture
async def broker(amqp_names: dict[str, str]) -> AsyncIterator[Broker]:
    """The test's audio exchange with a queue bound to ``sensor.#``; both deleted after."""
    exchange, queue = amqp_names["audio_exchange"], amqp_names["queue"]
    connection = await aiormq.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        await channel.queue_declare(queue, auto_delete=False)
        await channel.queue_bind(queue, exchange, routing_key="sensor.#")
        settings = config.load(
            {}, amqp_url=AMQP_URL, audio_exchange=exchange, http_host="127.0.0.1"
        )
        yield Broker(settings, channel, queue)
        await channel.queue_delete(queue)
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()


def headers(message: DeliveredMessage) -> dict[str, Any]:
    return dict(message.header.properties.headers or {})


def by_sensor(messages: list[DeliveredMessage]) -> dict[str, list[wire.Chunk]]:
    """Every message decoded (which must not fail), grouped per sensor in seq order."""
    chunks: dict[str, list[wire.Chunk]] = defaultdict(list)
    for message in messages:
        props = message.header.properties
        assert props.delivery_mode == 2
        assert message.routing_key == wire.routing_key(headers(message)["sensor_id"])
        chunk = wire.decode(props.content_type, props.headers, message.body, props.message_id)
        chunks[chunk.sensor_id].append(chunk)
    for sensor_chunks in chunks.values():
        sensor_chunks.sort(key=lambda c: c.seq)
    return dict(chunks)


def check_timing(chunks: dict[str, list[wire.Chunk]], chunk_ms: int, before: int) -> None:
    t0s = {c[0].start_ns for c in chunks.values()}
    assert len(t0s) == 1, "every sensor starts at the same t0"
    t0 = t0s.pop()
    assert before <= t0 <= time.time_ns()
    for sensor_chunks in chunks.values():
        rate = sensor_chunks[0].sample_rate
        size = round(rate * chunk_ms / 1000)
        assert [c.seq for c in sensor_chunks] == list(range(len(sensor_chunks)))
        for k, chunk in enumerate(sensor_chunks):
            assert chunk.start_ns == t0 + k * size * 10**9 // rate


@pytest.mark.parametrize("encoding", ["s16le", "f32le"])
async def test_synthetic_pcm(broker: Broker, encoding: str) -> None:
    sensors, chunk_ms = 5, 500
    before = time.time_ns()
    options = SimulateOptions(
        sensors=sensors, seconds=2.2, chunk_ms=chunk_ms, encoding=encoding, progress=False
    )
    summary = await simulate(broker.settings, options)

    messages = await broker.take_all()
    assert summary.chunks == len(messages) == sensors * 5  # 2.2 s in 0.5 s chunks
    assert summary.bytes == sum(len(m.body) for m in messages)
    for message in messages:
        assert message.header.properties.content_type == "audio/pcm"
        assert headers(message)["encoding"] == encoding
    chunks = by_sensor(messages)
    assert len(chunks) == sensors
    check_timing(chunks, chunk_ms, before)

    for index, sensor_id in enumerate(sorted(chunks)):
        assert re.fullmatch(r"sim-\d{6}-\d{3}", sensor_id), "default prefix: sim-HHMMSS"
        signal = SensorSignal.for_sensor(index)
        received = np.concatenate([c.samples for c in chunks[sensor_id]])
        assert len(received) == round(2.2 * signal.sample_rate), "the last chunk is short"
        expected = signal.samples(0, len(received))
        if signal.channels == 2:
            expected = expected.mean(axis=1)
        # s16le rounds to the nearest step of 1/32768.
        tolerance = 0.51 / 32768 if encoding == "s16le" else 1e-6
        np.testing.assert_allclose(received, expected, rtol=0, atol=tolerance)
    stereo = {headers(m)["sensor_id"] for m in messages if headers(m)["channels"] == 2}
    assert stereo == {sorted(chunks)[3]}


@pytest.mark.parametrize(
    ("rate", "channels", "encoding"), [(22050, 2, "s16le"), (16000, 1, "f32le")]
)
async def test_wav_file_is_cut_and_looped(
    broker: Broker, tmp_path: Path, rate: int, channels: int, encoding: str
) -> None:
    rng = np.random.default_rng(1)
    frames = round(1.3 * rate)
    recording = rng.uniform(-0.9, 0.9, (frames, channels)).astype(np.float32)
    path = tmp_path / "recording.wav"
    path.write_bytes(wav.build(recording, rate, encoding))
    # What the service makes of the whole file: the reference for the chunks.
    whole = wire.decode("audio/wav", {"sensor_id": "x", "seq": 0, "start_ns": 0}, path.read_bytes())

    before = time.time_ns()
    options = SimulateOptions(
        sensors=3, seconds=2.6, wav=path, chunk_ms=500, sensor_prefix="wavtest", progress=False
    )
    summary = await simulate(broker.settings, options)

    messages = await broker.take_all()
    assert summary.chunks == len(messages) == 3 * 6  # 2.6 s in 0.5 s chunks
    for message in messages:
        assert message.header.properties.content_type == "audio/wav"
        assert "sample_rate" not in headers(message)  # a WAV carries its own
        audio = wav.parse(message.body)
        assert (audio.sample_rate, audio.channels, audio.encoding) == (rate, channels, encoding)
    chunks = by_sensor(messages)
    assert sorted(chunks) == ["wavtest-000", "wavtest-001", "wavtest-002"]
    check_timing(chunks, 500, before)
    for sensor_chunks in chunks.values():
        received = np.concatenate([c.samples for c in sensor_chunks])
        # 2.6 s of a 1.3 s file: played twice, bit for bit.
        np.testing.assert_array_equal(received, np.tile(whole.samples, 2))


async def test_realtime_publishes_each_chunk_after_its_end(broker: Broker) -> None:
    arrivals: list[tuple[int, DeliveredMessage]] = []
    all_arrived = anyio.Event()

    async def on_message(message: DeliveredMessage) -> None:
        arrivals.append((time.time_ns(), message))
        if len(arrivals) == 6:
            all_arrived.set()

    await broker.channel.basic_consume(broker.queue, on_message, no_ack=True)
    options = SimulateOptions(sensors=2, seconds=0.6, chunk_ms=200, realtime=True, progress=False)
    started = time.monotonic()
    summary = await simulate(broker.settings, options)
    assert time.monotonic() - started >= 0.6
    assert summary.chunks == 6
    with anyio.fail_after(5):
        await all_arrived.wait()

    for arrived_ns, message in arrivals:
        chunk = wire.decode(message.header.properties.content_type, headers(message), message.body)
        end_ns = chunk.start_ns + len(chunk.samples) * 10**9 // chunk.sample_rate
        assert arrived_ns >= end_ns
    seqs = [headers(m)["seq"] for _, m in arrivals]
    assert seqs == [0, 0, 1, 1, 2, 2], "interleaved: chunk k of every sensor, then k+1"


async def test_cancel_closes_the_connection(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[aiormq.abc.AbstractConnection] = []
    real_connect = aiormq.connect

    async def connect(url: str) -> aiormq.abc.AbstractConnection:
        connection = await real_connect(url)
        opened.append(connection)
        return connection

    monkeypatch.setattr(aiormq, "connect", connect)
    options = SimulateOptions(sensors=2, seconds=30, chunk_ms=200, realtime=True, progress=False)
    started = time.monotonic()
    with anyio.move_on_after(0.5) as scope:
        await simulate(broker.settings, options)
    assert scope.cancelled_caught
    assert time.monotonic() - started < 2
    assert len(opened) == 1
    assert opened[0].is_closed
    messages = await broker.take_all()
    assert len(messages) <= 6  # rounds due at 0.2 and 0.4 s, not the 150 of 30 s


async def test_bad_options_fail_before_connecting() -> None:
    settings = config.load({}, amqp_url="amqp://nobody@127.0.0.1:1/", http_host="127.0.0.1")
    with pytest.raises(ValueError, match="sensors"):
        await simulate(settings, SimulateOptions(sensors=0, seconds=1))
    with pytest.raises(ValueError, match="encoding"):
        await simulate(settings, SimulateOptions(sensors=1, seconds=1, encoding="u8"))
    with pytest.raises(ValueError, match="limit"):
        await simulate(settings, SimulateOptions(sensors=4, seconds=60, chunk_ms=60_000))


def test_summary_line() -> None:
    summary = Summary(chunks=1500, bytes=46_100_000, seconds=3.2)
    assert summary.msg_per_s == pytest.approx(468.75)
    assert str(summary) == "published 1500 chunks (46.1 MB) in 3.2 s: 469 msg/s"


async def test_sigterm_stops_it_like_ctrl_c(broker: Broker) -> None:
    """As a container's main process too: a handler is installed, so SIGTERM is not
    ignored (PID 1 ignores signals it has no handler for)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SOUNDSTREAM_AMQP_URL": AMQP_URL,
        "SOUNDSTREAM_AUDIO_EXCHANGE": broker.settings.audio_exchange,
        "SOUNDSTREAM_HTTP_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "soundstream", "simulate", "--sensors", "1", "--seconds", "60",
         "--realtime", "--chunk-ms", "100"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def publishing() -> bool:
            declared = await broker.channel.queue_declare(broker.queue, passive=True)
            return bool(declared.message_count)

        deadline = time.monotonic() + 30
        while not await publishing():
            assert proc.poll() is None and time.monotonic() < deadline
            await anyio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=10)) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
