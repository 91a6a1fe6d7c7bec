"""What flows between the actors, and the pure arithmetic of frame timestamps.

Leaf module: numpy only, so the extractor's pool workers and the tests can use it
without the broker or database libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from soundstream.core.wire import Chunk

NS_PER_US = 1000
N = TypeVar("N", int, np.ndarray)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A decoded chunk still owed an ack (``tag`` is the AMQP delivery tag)."""

    tag: int
    chunk: Chunk
    received_us: int
    span: object = None  # its trace span, when tracing (never sent to a worker)


@dataclass(frozen=True, slots=True)
class Settle:
    """What the consumer does with a delivery: ack it (its rows are committed), or
    return it to the queue (``requeue``), where the broker counts the delivery
    against the queue's delivery limit."""

    tag: int
    requeue: bool = False


@dataclass(frozen=True, slots=True)
class Job:
    """What a pool worker needs of one chunk: the chunk and when it was received."""

    chunk: Chunk  # its samples still as they came: the worker converts them
    received_us: int

    @classmethod
    def of(cls, delivery: Delivery) -> Job:
        return cls(delivery.chunk, delivery.received_us)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A chunk's frames as the writer sends them: one ``chunk_frames`` row in binary
    COPY format (empty when the chunk has no frames), and the span it covers."""

    n_frames: int
    first_us: int | None
    last_us: int | None
    row: bytes


@dataclass(frozen=True, slots=True)
class Extracted:
    """A chunk ready to be written; the samples are no longer needed."""

    tag: int
    sensor_id: str
    seq: int
    start_ns: int
    sample_rate: int
    n_samples: int
    received_us: int
    frames: Encoded
    span: object = None

    @classmethod
    def of(cls, delivery: Delivery, frames: Encoded) -> Extracted:
        chunk = delivery.chunk
        return cls(
            delivery.tag,
            chunk.sensor_id,
            chunk.seq,
            chunk.start_ns,
            chunk.sample_rate,
            chunk.n_samples,
            delivery.received_us,
            frames,
            delivery.span,
        )


def div_round_half_even(numerator: N, denominator: int) -> N:
    """Integer division rounded to nearest, ties to even (as Python's ``round``),
    for a Python int or element-wise for an integer array."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    up = (twice > denominator) | ((twice == denominator) & (quotient % 2 == 1))
    result: N = quotient + up
    return result


def frame_times_ns(start_ns: int, n_frames: int, hop: int, sample_rate: int) -> np.ndarray:
    """``start_ns + round(i * hop * 1e9 / sample_rate)`` for every frame, exactly.

    Integer arithmetic: a float product loses nanoseconds for long chunks.
    """
    offsets = np.arange(n_frames, dtype=np.int64) * np.int64(hop * 1_000_000_000)
    return np.int64(start_ns) + div_round_half_even(offsets, sample_rate)


def frame_times_us(start_ns: int, n_frames: int, hop: int, sample_rate: int) -> np.ndarray:
    """Frame times at the stored precision: nanoseconds rounded to microseconds."""
    step_ns, inexact = divmod(hop * 1_000_000_000, sample_rate)
    if not inexact and not step_ns % NS_PER_US and start_ns % NS_PER_US != NS_PER_US // 2:
        # Whole microseconds apart (16 kHz with the default hop): every frame rounds
        # as the first does, and no tie is involved.
        first: int = div_round_half_even(start_ns, NS_PER_US)
        return first + np.arange(n_frames, dtype=np.int64) * (step_ns // NS_PER_US)
    return div_round_half_even(frame_times_ns(start_ns, n_frames, hop, sample_rate), NS_PER_US)


def ns_to_us(ns: int) -> int:
    return div_round_half_even(ns, NS_PER_US)
