"""PostgreSQL's binary COPY format for ``chunk_frames`` rows, built with numpy.

One chunk is one row: its frames' times and each feature as an array. The pool
worker that computed the features encodes the row, so the main process only
passes bytes on to PostgreSQL and never touches a frame. Pure: numpy only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np

from soundstream.core.fields import SCALARS, Features
from soundstream.core.records import Encoded, Job, frame_times_us

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
FLOAT4_OID = 700
TIMESTAMPTZ_OID = 1184
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01, where timestamptz counts from
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The column order every row is written in.
COLUMNS = (
    "sensor_id",
    "start_ts",
    "seq",
    "last_ts",
    "received_at",
    "n_frames",
    "ts",
    *SCALARS,
    "mel",
    "mfcc",
)
_FLOAT4 = np.dtype([("len", ">i4"), ("v", ">f4")])
_INT8 = np.dtype([("len", ">i4"), ("v", ">i8")])


def _array(values: np.ndarray, element: np.dtype[np.void], oid: int) -> bytes:
    """A one-dimensional array field: length word, array header, (length, value) pairs."""
    flat = values.reshape(-1)
    n = len(flat)
    pairs = np.empty(n, element)
    pairs["len"] = element["v"].itemsize
    pairs["v"] = flat
    head = struct.pack(">6i", 20 + n * element.itemsize, 1, 0, oid, n, 1)
    return head + pairs.tobytes()


def _real_arrays(arrays: list[np.ndarray]) -> list[bytes | memoryview]:
    """Several ``real[]`` fields, their elements converted by one numpy pass: what
    ``_array`` gives for each, as parts to join."""
    flats = [values.reshape(-1) for values in arrays]
    pairs = np.empty(sum(len(flat) for flat in flats), _FLOAT4)
    pairs["len"] = 4
    pairs["v"] = np.concatenate(flats)
    raw = memoryview(pairs.tobytes())
    parts: list[bytes | memoryview] = []
    at = 0
    for flat in flats:
        n = len(flat)
        parts += [struct.pack(">6i", 20 + 8 * n, 1, 0, FLOAT4_OID, n, 1), raw[at : at + 8 * n]]
        at += 8 * n
    return parts


def _timestamp(us: int) -> bytes:
    return struct.pack(">iq", 8, us - PG_EPOCH_US)


def chunk_row(job: Job, hop: int, features: Features) -> Encoded:
    """The chunk's ``chunk_frames`` row (no file header or trailer); no row without frames."""
    n = len(features)
    if not n:
        return Encoded(0, None, None, b"")
    chunk = job.chunk
    times = frame_times_us(chunk.start_ns, n, hop, chunk.sample_rate)
    first, last = int(times[0]), int(times[-1])
    sensor = chunk.sensor_id.encode("ascii")  # sensor ids are ASCII by the wire format
    parts: list[bytes | memoryview] = [
        struct.pack(">hi", len(COLUMNS), len(sensor)),
        sensor,
        _timestamp(first),
        struct.pack(">iq", 8, chunk.seq),
        _timestamp(last),
        _timestamp(job.received_us),
        struct.pack(">ii", 4, n),
        _array(times - PG_EPOCH_US, _INT8, TIMESTAMPTZ_OID),
    ]
    parts += _real_arrays(
        [*(getattr(features, name) for name in SCALARS), features.mel, features.mfcc]
    )
    return Encoded(n, first, last, b"".join(parts))


def stream(rows: Iterable[bytes]) -> Iterable[bytes]:
    """The whole COPY stream for encoded rows, as parts in order."""
    yield HEADER
    yield from rows
    yield TRAILER


# Reading back: ``array_send`` gives the same binary array format: a header of 12
# bytes plus 8 per dimension (none for an empty array), then (length, value) pairs.


def _concat(raws: list[bytes], element: np.dtype[np.void]) -> tuple[np.ndarray, list[int]]:
    """The elements of one-dimensional arrays, end to end, and each array's count."""
    bodies, counts = [], []
    for raw in raws:
        ndim = raw[3]  # a big-endian int32 that is 0 or 1 here
        if ndim > 1:
            raise ValueError(f"expected a one-dimensional array, got {ndim} dimensions")
        body = raw[12 + 8 * ndim :]
        bodies.append(body)
        counts.append(len(body) // element.itemsize)
    return np.frombuffer(b"".join(bodies), element)["v"], counts


def decode_reals(raws: list[bytes]) -> tuple[np.ndarray, list[int]]:
    """``real[]`` values in binary format -> their float32 values end to end, and
    how many each array held."""
    values, counts = _concat(raws, _FLOAT4)
    return values.astype(np.float32), counts


def decode_timestamps(raws: list[bytes]) -> tuple[np.ndarray, list[int]]:
    """``timestamptz[]`` values in binary format -> int64 microseconds since the UNIX
    epoch, end to end, and how many each array held."""
    values, counts = _concat(raws, _INT8)
    return values.astype(np.int64) + PG_EPOCH_US, counts
