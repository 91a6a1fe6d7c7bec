"""The wire format (DESIGN.md section 2): an AMQP message <-> a validated chunk.

Pure: no broker library is imported. ``decode`` either returns a ``Chunk`` or raises
``Malformed`` with a one-line reason that goes into the dead copy's ``x-error``, whatever
the publisher sent (``deadcopy`` builds that copy's headers).

Header values arrive as pamqp decodes an AMQP field table: ``str`` for a long string that
is valid UTF-8, ``bytes`` for one that is not, ``bytearray`` for a byte array, ``int`` for
every integer width, ``float``, ``Decimal``, ``bool``, ``datetime``, ``list``, ``dict`` and
``None`` (void). The listed headers must be an integer or a string exactly; any other type,
``bytes`` and ``bool`` included, is mistyped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np

from soundstream.config import MAX_BODY_KB
from soundstream.core import wav
from soundstream.errors import Malformed

MAX_BODY_BYTES = MAX_BODY_KB * 1024
PCM = "audio/pcm"
WAV = "audio/wav"
SENSOR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENCODINGS: dict[str, np.dtype[Any]] = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 192000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NS_PER_S = 1_000_000_000
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message's audio and where it sits in time.

    ``pcm`` is the samples as they came, interleaved over ``channels``: int16 (s16le)
    or float32, a view of the message body, validated but not converted; ``samples``
    converts (in the pool worker, not in the process that received the message).
    """

    sensor_id: str
    seq: int
    start_ns: int
    sample_rate: int
    pcm: np.ndarray
    channels: int = 1

    @property
    def n_samples(self) -> int:
        return len(self.pcm) // self.channels

    @property
    def samples(self) -> np.ndarray:
        """Mono float32 in [-1, 1]."""
        return mono(self.pcm, self.channels)


def valid_sensor_id(value: object) -> bool:
    return isinstance(value, str) and SENSOR_ID.fullmatch(value) is not None


def decode(
    content_type: object,
    headers: object,
    body: bytes,
    message_id: object = None,
    *,
    routing_key: str | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> Chunk:
    """Validate one message; ``Malformed`` is the only exception it raises.

    The consumer passes the properties as the client library decoded them (so any type
    may turn up), always the routing key, and its deployment's body limit (at most the
    wire format's); the message id is checked last.
    """
    if isinstance(body, bytearray | memoryview):
        body = bytes(body)
    if not isinstance(body, bytes):
        raise Malformed(f"body must be bytes, got {field_kind(body)}")
    limit = min(max_body, MAX_BODY_BYTES)
    if len(body) > limit:
        raise Malformed(f"body is {len(body)} bytes; the limit is {limit}")
    if headers is None:
        headers = {}
    elif not isinstance(headers, Mapping):
        raise Malformed(f"headers must be a table, got {field_kind(headers)}")
    sensor_id = _str_header(headers, "sensor_id")
    if SENSOR_ID.fullmatch(sensor_id) is None:
        raise Malformed(
            f"header sensor_id must match [A-Za-z0-9._-]{{1,64}}, got {short_repr(sensor_id)}"
        )
    seq = _int_header(headers, "seq", 0, INT64_MAX)
    start_ns = _int_header(headers, "start_ns", 0, INT64_MAX)

    if content_type is not None and not isinstance(content_type, str):
        raise Malformed(f"content_type must be a string, got {field_kind(content_type)}")
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == PCM:
        rate = _int_header(headers, "sample_rate", MIN_RATE, MAX_RATE)
        encoding = _str_header(headers, "encoding")
        if encoding not in ENCODINGS:
            raise Malformed(
                f"header encoding must be s16le or f32le, got {short_repr(encoding, 20)}"
            )
        channels = _int_header(headers, "channels", 1, 2)
        data: bytes | memoryview = body
    elif kind == WAV:
        # The PCM-only headers are not read: the file carries its own format.
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
        raise Malformed(
            f"content_type must be {PCM} or {WAV}, got {short_repr(content_type or '')}"
        )

    pcm = interleaved(data, ENCODINGS[encoding], channels)
    n_samples = len(pcm) // channels
    # Python ints, so the sum itself cannot wrap; the chunk ends ceil(n / rate) s later.
    end_ns = start_ns + -(-n_samples * NS_PER_S // rate)
    if end_ns > INT64_MAX:
        raise Malformed(
            f"frame times overflow int64 nanoseconds: start_ns {start_ns} plus "
            f"{n_samples} samples at {rate} Hz"
        )
    _check_names(sensor_id, seq, routing_key, message_id)
    return Chunk(sensor_id, seq, start_ns, rate, pcm, channels)


def _check_names(sensor_id: str, seq: int, routing_key: object, message_id: object) -> None:
    """The routing key and the message id, where given, must name this chunk."""
    if routing_key is not None:
        if not isinstance(routing_key, str):
            raise Malformed(f"routing key must be a string, got {field_kind(routing_key)}")
        if routing_key != f"sensor.{sensor_id}":
            raise Malformed(f"routing key {short_repr(routing_key)} is not 'sensor.{sensor_id}'")
    if message_id is not None:
        if not isinstance(message_id, str):
            raise Malformed(f"message_id must be a string, got {field_kind(message_id)}")
        if message_id and message_id != f"{sensor_id}:{seq}":
            raise Malformed(f"message_id {short_repr(message_id)} is not '{sensor_id}:{seq}'")


def interleaved(data: bytes | memoryview, dtype: np.dtype[Any], channels: int) -> np.ndarray:
    """Validated interleaved little-endian samples, as they are: an array over
    ``data`` (bytes: a copy of a view of a larger body, so the chunk pickles alone)."""
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise Malformed(
            f"body length {len(data)} is not a whole number of {channels}-channel "
            f"{dtype.itemsize * 8}-bit samples"
        )
    raw = np.frombuffer(data if isinstance(data, bytes) else bytes(data), dtype=dtype)
    if dtype.kind == "f" and not np.isfinite(raw).all():
        raise Malformed("samples contain NaN or Inf")
    return raw


def to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 or float32 samples -> float32 in [-1, 1]."""
    if pcm.dtype.kind == "i":
        # Dividing by a power of two is exact in float32.
        return pcm.astype(np.float32) * np.float32(1.0 / 32768.0)
    return pcm.astype(np.float32)


def mono(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved samples -> mono float32: stereo is averaged."""
    samples = to_float(pcm)
    if channels == 2:
        frames = samples.reshape(-1, 2)
        averaged: np.ndarray = (frames[:, 0] + frames[:, 1]) * np.float32(0.5)
        return averaged
    return samples


def to_frames(data: bytes | memoryview, dtype: np.dtype[Any], channels: int) -> np.ndarray:
    """Interleaved little-endian samples -> float32 in [-1, 1], (frames, channels)."""
    return to_float(interleaved(data, dtype, channels)).reshape(-1, channels)


def _str_header(headers: Mapping[Any, Any], name: str) -> str:
    value = headers.get(name, _ABSENT)
    if value is _ABSENT:
        raise Malformed(f"header {name} is missing")
    if not isinstance(value, str):
        raise Malformed(f"header {name} must be a string, got {field_kind(value)}")
    return value


def _int_header(headers: Mapping[Any, Any], name: str, lo: int, hi: int) -> int:
    value = headers.get(name, _ABSENT)
    if value is _ABSENT:
        raise Malformed(f"header {name} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(f"header {name} must be an integer, got {field_kind(value)}")
    if not lo <= value <= hi:
        raise Malformed(f"header {name} must be in {lo}..{hi}, got {_show_int(value)}")
    return value


def field_kind(value: object) -> str:
    """The AMQP field type a decoded value came from, for a reason."""
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return "non-UTF-8 string"
        return "bytes"
    for types, name in _KINDS:
        if isinstance(value, types):
            return name
    return short_repr(type(value).__qualname__, 40)


# Order matters: bool is an int.
_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "void"),
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (Decimal, "decimal"),
    (str, "string"),
    (bytearray, "byte array"),
    ((datetime, time.struct_time), "timestamp"),
    (list, "array"),
    (Mapping, "table"),
)


def short_repr(value: str | bytes | bytearray, limit: int = 60) -> str:
    """A short repr: never the whole of a huge value, never a line break."""
    text = repr(value[:limit])
    if len(value) > limit or len(text) > 2 * limit:
        text = text[: 2 * limit] + "..."
    return text


def _show_int(value: int) -> str:
    # str() of a huge int is slow, long, and refused past 4300 digits.
    return str(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"


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
