"""One load-test sensor's stream: chunk k of its audio, as the wire format wants it.

Pure (numpy and the package's own wire encoding), so it runs as well under gevent as
anywhere. The audio is a simulated sensor's (``soundstream.sim.signals``), mono at the
chosen rate, encoded once into a bank of consecutive chunks that every sensor loops
through from its own place, as ``soundstream simulate`` loops a WAV file: a load
generator that computed every chunk would spend its CPU on sines, and sensors whose
chunks are all due at once would wait for each other's sines. Chunk times are counted
in samples as ``simulate`` counts them, so ``start_ns`` of chunk k is exactly where
chunk k-1 ended.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any

from soundstream.core import wire
from soundstream.sim.signals import SensorSignal

PERSISTENT = 2
BANK_CHUNKS = 16  # distinct chunk bodies per (rate, chunk length, encoding)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message, ready for any AMQP client."""

    sensor_id: str
    seq: int
    start_ns: int
    end_ns: int  # when its last sample is over
    routing_key: str
    message_id: str
    content_type: str
    headers: dict[str, Any]
    body: bytes


@functools.cache
def bank(sample_rate: int, chunk_samples: int, encoding: str) -> tuple[bytes, ...]:
    """``BANK_CHUNKS`` consecutive chunk bodies of one simulated sensor."""
    signal = _mono(SensorSignal.for_sensor(0), sample_rate)
    return tuple(
        wire.encode_pcm(signal.samples(k * chunk_samples, chunk_samples), encoding)
        for k in range(BANK_CHUNKS)
    )


class SensorStream:
    """Chunks 0, 1, 2, ... of one sensor, from ``t0_ns`` on, each due when its last
    sample is in the past (measured on the monotonic clock, so a step of the wall
    clock neither stalls nor rushes the stream)."""

    def __init__(
        self,
        sensor_id: str,
        index: int,
        *,
        sample_rate: int = 16000,
        chunk_ms: int = 1000,
        encoding: str = "s16le",
        start_in_s: float = 0.0,
    ) -> None:
        if not wire.valid_sensor_id(sensor_id):
            raise ValueError(f"sensor id {sensor_id!r} must match [A-Za-z0-9._-]{{1,64}}")
        if not wire.MIN_RATE <= sample_rate <= wire.MAX_RATE:
            raise ValueError(f"sample rate must be {wire.MIN_RATE}..{wire.MAX_RATE}")
        if encoding not in wire.ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(wire.ENCODINGS)}, got {encoding!r}")
        if chunk_ms < 1:
            raise ValueError(f"chunk_ms must be at least 1, got {chunk_ms}")
        self.sensor_id = sensor_id
        self.sample_rate = sample_rate
        self.encoding = encoding
        self.chunk_samples = max(1, round(sample_rate * chunk_ms / 1000))
        size = self.chunk_samples * wire.ENCODINGS[encoding].itemsize
        if size > wire.MAX_BODY_BYTES:
            raise ValueError(
                f"chunks of {size} bytes are over the {wire.MAX_BODY_BYTES}-byte limit"
            )
        self.bodies = bank(sample_rate, self.chunk_samples, encoding)
        self.offset = index * 7  # where in the bank this sensor starts
        # Chunk 0 starts ``start_in_s`` from now, so it is due a chunk later than that.
        delay_ns = round(start_in_s * 1e9)
        self.t0_ns = time.time_ns() + delay_ns
        self.t0_mono_ns = time.monotonic_ns() + delay_ns
        self.seq = 0  # the next chunk's

    def _offset_ns(self, sample: int) -> int:
        # From the sample count, so chunk lengths that are not whole nanoseconds never
        # add up to an error.
        return sample * wire.NS_PER_S // self.sample_rate

    def due_in(self, now_mono_ns: int | None = None) -> float:
        """Seconds until the next chunk is due; 0 when it is (or overdue)."""
        now = time.monotonic_ns() if now_mono_ns is None else now_mono_ns
        due = self.t0_mono_ns + self._offset_ns((self.seq + 1) * self.chunk_samples)
        return max(0.0, (due - now) / 1e9)

    def next(self) -> Chunk:
        """The next chunk; the stream moves on whatever becomes of it, as a sensor's
        clock does."""
        seq = self.seq
        self.seq += 1
        first = seq * self.chunk_samples
        start_ns = self.t0_ns + self._offset_ns(first)
        return Chunk(
            sensor_id=self.sensor_id,
            seq=seq,
            start_ns=start_ns,
            end_ns=self.t0_ns + self._offset_ns(first + self.chunk_samples),
            routing_key=wire.routing_key(self.sensor_id),
            message_id=wire.message_id(self.sensor_id, seq),
            content_type=wire.PCM,
            headers=wire.headers_for(
                self.sensor_id,
                seq,
                start_ns,
                sample_rate=self.sample_rate,
                encoding=self.encoding,
                channels=1,
            ),
            body=self.bodies[(self.offset + seq) % len(self.bodies)],
        )


def _mono(signal: SensorSignal, sample_rate: int) -> SensorSignal:
    """The same tones and noise as one channel at ``sample_rate``."""
    tones = tuple(dataclasses.replace(tone, gains=(1.0,)) for tone in signal.tones)
    return dataclasses.replace(signal, sample_rate=sample_rate, channels=1, tones=tones)
