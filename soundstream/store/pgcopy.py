"""PostgreSQL's binary COPY format for ``chunk_frames`` rows, built with numpy.

One chunk is one row: its frames' times and each feature as an array, and per
scalar feature the partial aggregates a downsampled read takes from a chunk that
lies inside one bucket (``store.downsample``). The pool worker that computed the
features encodes the row, so the main process only passes bytes on to PostgreSQL
and never touches a frame. Pure: numpy only.
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
# Per scalar feature, over the chunk's frames: the float8 sum, the real min and the
# real max, each in a column named ``<feature>_<partial>``.
PARTIALS = ("sum", "min", "max")


def partial_column(field: str, partial: str) -> str:
    """The column of ``partial`` (one of ``PARTIALS``) of the scalar ``field``."""
    return f"{field}_{partial}"


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
    *(partial_column(name, partial) for name in SCALARS for partial in PARTIALS),
)
_FLOAT4 = np.dtype([("len", ">i4"), ("v", ">f4")])
_INT8 = np.dtype([("len", ">i4"), ("v", ">i8")])
# One scalar feature's partials as COPY fields: (length, float8), (length, real) twice,
# the lengths filled in once.
_PARTIAL_FIELDS = np.zeros(
    len(SCALARS),
    [
        ("sum_len", ">i4"),
        ("sum", ">f8"),
        ("min_len", ">i4"),
        ("min", ">f4"),
        ("max_len", ">i4"),
        ("max", ">f4"),
    ],
)
_PARTIAL_FIELDS[["sum_len", "min_len", "max_len"]] = (8, 4, 4)


def _array(values: np.ndarray, element: np.dtype[np.void], oid: int) -> bytes:
    """A one-dimensional array field: length word, array header, (length, value) pairs."""
    flat = values.reshape(-1)
    n = len(flat)
    pairs = np.empty(n, element)
    pairs["len"] = element["v"].itemsize
    pairs["v"] = flat
    head = struct.pack(">6i", 20 + n * element.itemsize, 1, 0, oid, n, 1)
    return head + pairs.tobytes()


def _real_arrays(arrays: list[np.ndarray]) -> tuple[list[bytes | memoryview], np.ndarray]:
    """Several ``real[]`` fields, their elements converted by one numpy pass: what
    ``_array`` gives for each, as parts to join; and all their values end to end."""
    flats = [values.reshape(-1) for values in arrays]
    values = np.concatenate(flats)
    pairs = np.empty(len(values), _FLOAT4)
    pairs["len"] = 4
    pairs["v"] = values
    raw = memoryview(pairs.tobytes())
    parts: list[bytes | memoryview] = []
    at = 0
    for flat in flats:
        n = len(flat)
        parts += [struct.pack(">6i", 20 + 8 * n, 1, 0, FLOAT4_OID, n, 1), raw[at : at + 8 * n]]
        at += 8 * n
    return parts, values


def partials(scalars: np.ndarray) -> bytes:
    """The partial columns of ``COLUMNS`` for ``scalars`` (one row of frames per
    field of ``SCALARS``, float32), equal to what PostgreSQL computes over the stored
    arrays: ``sum(x::float8)`` adds the frames one after another in array order
    (``accumulate``: numpy's ``sum`` adds pairwise, which may round otherwise), and
    ``min`` and ``max`` order NaN above every number, so the maximum is NaN if any
    frame is, and the minimum only if every frame is (``fmin`` skips NaN)."""
    fields = _PARTIAL_FIELDS.copy()
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as in PostgreSQL
        fields["sum"] = np.add.accumulate(scalars, axis=1, dtype=np.float64)[:, -1]
    fields["min"] = np.fmin.reduce(scalars, axis=1)
    fields["max"] = np.maximum.reduce(scalars, axis=1)
    return fields.tobytes()


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
    arrays, values = _real_arrays(
        [*(getattr(features, name) for name in SCALARS), features.mel, features.mfcc]
    )
    parts += arrays
    parts.append(partials(values[: len(SCALARS) * n].reshape(len(SCALARS), n)))
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
