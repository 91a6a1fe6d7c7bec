"""The binary COPY encoding, checked field by field against the format's definition."""

from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from soundstream.core.fields import SCALARS, Features
from soundstream.core.records import Encoded, Job, frame_times_us
from soundstream.core.wire import Chunk
from soundstream.store import pgcopy


def features(n: int, n_mels: int = 3, n_mfcc: int = 2) -> Features:
    rng = np.random.default_rng(n)
    col = lambda: rng.standard_normal(n).astype(np.float32)  # noqa: E731
    return Features(
        *(col() for _ in SCALARS),
        mel=rng.standard_normal((n, n_mels)).astype(np.float32),
        mfcc=rng.standard_normal((n, n_mfcc)).astype(np.float32),
    )


def job(sensor: str) -> Job:
    return Job(Chunk(sensor, 42, 1_767_225_600_123_456_789, 16000, np.zeros(0, np.float32)), 17)


def decode(data: bytes) -> list[list[object]]:
    """A minimal reader of the format, written from the specification."""
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00")
    pos = 19
    rows = []
    while True:
        (count,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if count == -1:
            assert pos == len(data)
            return rows
        row: list[object] = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", data, pos)
            row.append(data[pos + 4 : pos + 4 + length])
            pos += 4 + length
        rows.append(row)


def real_array(raw: bytes) -> list[float]:
    ndim, nulls, oid, size, lower = struct.unpack_from(">5i", raw)
    assert (ndim, nulls, oid, lower) == (1, 0, 700, 1)
    values = []
    for i in range(size):
        length, value = struct.unpack_from(">if", raw, 20 + 8 * i)
        assert length == 4
        values.append(value)
    return values


def int8_array(raw: bytes) -> list[int]:
    ndim, nulls, oid, size, lower = struct.unpack_from(">5i", raw)
    assert (ndim, nulls, oid, lower) == (1, 0, 1184, 1)
    values = []
    for i in range(size):
        length, value = struct.unpack_from(">iq", raw, 20 + 12 * i)
        assert length == 8
        values.append(value)
    return values


@given(st.integers(0, 20), st.text("abcXYZ019._-", min_size=1, max_size=64))
def test_a_chunk_row_decodes_to_its_features(n: int, sensor: str) -> None:
    f = features(n)
    encoded = pgcopy.chunk_row(job(sensor), 512, f)
    assert encoded.n_frames == n
    if not n:
        assert encoded == Encoded(0, None, None, b"")
        return
    times = frame_times_us(1_767_225_600_123_456_789, n, 512, 16000)
    assert (encoded.first_us, encoded.last_us) == (times[0], times[-1])
    rows = decode(b"".join(pgcopy.stream([encoded.row, encoded.row])))
    assert len(rows) == 2
    row = rows[0]
    assert len(row) == len(pgcopy.COLUMNS)
    values = dict(zip(pgcopy.COLUMNS, row, strict=True))
    assert values["sensor_id"] == sensor.encode()
    pg_us = lambda raw: struct.unpack(">q", raw)[0] + pgcopy.PG_EPOCH_US  # noqa: E731
    assert pg_us(values["start_ts"]) == times[0] and pg_us(values["last_ts"]) == times[-1]
    assert pg_us(values["received_at"]) == 17
    assert struct.unpack(">q", values["seq"])[0] == 42
    assert struct.unpack(">i", values["n_frames"])[0] == n
    assert [v + pgcopy.PG_EPOCH_US for v in int8_array(values["ts"])] == times.tolist()
    for name in SCALARS:
        assert real_array(values[name]) == getattr(f, name).tolist()
    assert real_array(values["mel"]) == f.mel.reshape(-1).tolist()
    assert real_array(values["mfcc"]) == f.mfcc.reshape(-1).tolist()
    for name in SCALARS:
        frames = real_array(values[name])
        stored = [partial(values, name, kind) for kind in pgcopy.PARTIALS]
        assert stored == [as_postgresql(frames, kind) for kind in pgcopy.PARTIALS]


def partial(values: dict[str, bytes], name: str, kind: str) -> float:
    """A partial column as decoded from its COPY field: float8 for the sum, real else."""
    raw = values[pgcopy.partial_column(name, kind)]
    assert len(raw) == (8 if kind == "sum" else 4)
    value: float = struct.unpack(">d" if kind == "sum" else ">f", raw)[0]
    return value


def as_postgresql(frames: list[float], kind: str) -> float:
    """What PostgreSQL's ``sum(x::float8)``, ``min(x)`` and ``max(x)`` give over a
    ``real[]``: the sum adds one frame after another; NaN sorts above every number."""
    if kind == "sum":
        total = frames[0]
        for value in frames[1:]:
            total += value
        return total
    numbers = [value for value in frames if not math.isnan(value)]
    if kind == "max":
        return math.nan if len(numbers) < len(frames) else max(numbers)
    return min(numbers) if numbers else math.nan


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# Any float32, NaN and the infinities included, spread over many powers of two so
# that the order of the additions shows in the sums.
_ANY_REAL = st.floats(width=32) | st.builds(
    lambda m, e: m * 2.0**e, st.floats(-1, 1, width=32), st.integers(-60, 60)
)


@given(
    st.integers(1, 40).flatmap(
        lambda n: st.lists(
            st.lists(_ANY_REAL, min_size=n, max_size=n),
            min_size=len(SCALARS),
            max_size=len(SCALARS),
        )
    )
)
def test_partials_are_what_postgresql_computes_over_the_arrays(rows: list[list[float]]) -> None:
    scalars = np.array(rows, np.float32)
    raw = pgcopy.partials(scalars)
    fields = struct.unpack(">" + "idifif" * len(scalars), raw)
    for i, frames in enumerate(scalars.astype(np.float64).tolist()):
        lengths = fields[6 * i : 6 * i + 6 : 2]
        stored = fields[6 * i + 1 : 6 * i + 6 : 2]
        assert lengths == (8, 4, 4)
        for kind, value in zip(pgcopy.PARTIALS, stored, strict=True):
            assert same(value, as_postgresql(frames, kind)), (kind, frames)


def test_partial_columns_follow_the_scalars_in_the_copy_columns() -> None:
    names = [pgcopy.partial_column(name, kind) for name in SCALARS for kind in pgcopy.PARTIALS]
    assert pgcopy.COLUMNS[-len(names) :] == tuple(names)
    assert names[:3] == ["rms_sum", "rms_min", "rms_max"]


def test_an_empty_stream_is_valid() -> None:
    assert decode(b"".join(pgcopy.stream([]))) == []


@given(st.lists(st.lists(st.floats(width=32, allow_nan=False), max_size=50), max_size=5))
def test_reals_read_back(arrays: list[list[float]]) -> None:
    as_sent = [np.array(values, np.float32) for values in arrays]
    # As array_send gives them: without the COPY field's length word.
    raws = [pgcopy._array(a, pgcopy._FLOAT4, pgcopy.FLOAT4_OID)[4:] for a in as_sent]
    raws.append(struct.pack(">3i", 0, 0, pgcopy.FLOAT4_OID))  # PostgreSQL's empty array
    values, counts = pgcopy.decode_reals(raws)
    assert counts == [len(a) for a in arrays] + [0]
    np.testing.assert_array_equal(values, np.concatenate([*as_sent, np.empty(0, np.float32)]))
