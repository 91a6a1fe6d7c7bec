"""The wire format (DESIGN.md section 2): an AMQP message <-> a validated chunk.

Pure: no broker library is imported. ``decode`` either returns a ``Chunk`` or raises
``Malformed`` with a one-line reason that goes into the dead copy's ``x-error``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundstream import wav
from soundstream.errors import Malformed

MAX_BODY_BYTES = 8 * 1024 * 1024
PCM = "audio/pcm"
WAV = "audio/wav"
SENSOR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENCODINGS: dict[str, np.dtype[Any]] = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 192000
INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message's audio: mono float32 samples and where they sit in time."""

    sensor_id: str
    seq: int
    start_ns: int
    sample_rate: int
    samples: np.ndarray


def valid_sensor_id(value: object) -> bool:
    return isinstance(value, str) and SENSOR_ID.fullmatch(value) is not None


def decode(
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    body: bytes,
    message_id: str | None = None,
    *,
    routing_key: str | None = None,
) -> Chunk:
    headers = headers or {}
    if len(body) > MAX_BODY_BYTES:
        raise Malformed(f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    sensor_id = headers.get("sensor_id")
    if isinstance(sensor_id, bytes):
        sensor_id = sensor_id.decode("utf-8", "replace")
    if sensor_id is None:
        raise Malformed("header sensor_id is missing")
    if not valid_sensor_id(sensor_id):
        raise Malformed(
            f"header sensor_id must match [A-Za-z0-9._-]{{1,64}}, got {sensor_id!r:.80}"
        )
    seq = _int_header(headers, "seq", 0, INT64_MAX)
    start_ns = _int_header(headers, "start_ns", 0, INT64_MAX)

    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == PCM:
        rate = _int_header(headers, "sample_rate", MIN_RATE, MAX_RATE)
        encoding = headers.get("encoding")
        if isinstance(encoding, bytes):
            encoding = encoding.decode("utf-8", "replace")
        if encoding is None:
            raise Malformed("header encoding is missing")
        if encoding not in ENCODINGS:
            raise Malformed(f"header encoding must be s16le or f32le, got {encoding!r:.40}")
        channels = _int_header(headers, "channels", 1, 2)
        data: bytes | memoryview = body
    elif kind == WAV:
        audio = wav.parse(body)
        if not MIN_RATE <= audio.sample_rate <= MAX_RATE:
            raise Malformed(f"wav: sample rate {audio.sample_rate} outside {MIN_RATE}..{MAX_RATE}")
        rate, encoding, channels, data = (
            audio.sample_rate,
            audio.encoding,
            audio.channels,
            audio.data,
        )
    elif not kind:
        raise Malformed("content_type is missing")
    else:
        raise Malformed(f"content_type must be {PCM} or {WAV}, got {content_type!r:.60}")

    samples = to_mono(data, ENCODINGS[encoding], channels)
    if routing_key is not None and routing_key != f"sensor.{sensor_id}":
        raise Malformed(f"routing key {routing_key!r:.80} is not 'sensor.{sensor_id}'")
    if message_id and message_id != f"{sensor_id}:{seq}":
        raise Malformed(f"message_id {message_id!r:.80} is not '{sensor_id}:{seq}'")
    return Chunk(sensor_id, seq, start_ns, rate, samples)


def to_frames(data: bytes | memoryview, dtype: np.dtype[Any], channels: int) -> np.ndarray:
    """Interleaved little-endian samples -> float32 in [-1, 1], (frames, channels)."""
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise Malformed(
            f"body length {len(data)} is not a whole number of {channels}-channel "
            f"{dtype.itemsize * 8}-bit samples"
        )
    raw = np.frombuffer(data, dtype=dtype)
    if dtype.kind == "i":
        # Dividing by a power of two is exact in float32.
        samples = raw.astype(np.float32) * np.float32(1.0 / 32768.0)
    else:
        samples = raw.astype(np.float32)
        if not np.isfinite(samples).all():
            raise Malformed("samples contain NaN or Inf")
    return samples.reshape(-1, channels)


def to_mono(data: bytes | memoryview, dtype: np.dtype[Any], channels: int) -> np.ndarray:
    """Interleaved little-endian samples -> mono float32 in [-1, 1]."""
    frames = to_frames(data, dtype, channels)
    if channels == 2:
        mono: np.ndarray = (frames[:, 0] + frames[:, 1]) * np.float32(0.5)
        return mono
    return frames[:, 0]


def _int_header(headers: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value = headers.get(name)
    if value is None:
        raise Malformed(f"header {name} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(f"header {name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise Malformed(f"header {name} must be in {lo}..{hi}, got {value}")
    return value


def encode_pcm(samples: np.ndarray, encoding: str) -> bytes:
    """Samples (frames, or frames x channels) in [-1, 1] -> interleaved little-endian body."""
    return wav.encode_samples(samples, encoding)


def headers_for(
    sensor_id: str,
    seq: int,
    start_ns: int,
    *,
    sample_rate: int | None = None,
    encoding: str | None = None,
    channels: int | None = None,
) -> dict[str, Any]:
    """The AMQP headers of one chunk; the PCM-only ones when given."""
    headers: dict[str, Any] = {"sensor_id": sensor_id, "seq": seq, "start_ns": start_ns}
    if sample_rate is not None:
        headers.update(sample_rate=sample_rate, encoding=encoding, channels=channels)
    return headers


def message_id(sensor_id: str, seq: int) -> str:
    return f"{sensor_id}:{seq}"


def routing_key(sensor_id: str) -> str:
    return f"sensor.{sensor_id}"


def dead_letter_headers(headers: object, reason: str, routing_key: str | None) -> dict[str, Any]:
    copy: dict[str, Any] = dict(headers) if isinstance(headers, dict) else {}
    copy["x-error"] = reason
    copy["x-original-routing-key"] = routing_key or ""
    return copy
