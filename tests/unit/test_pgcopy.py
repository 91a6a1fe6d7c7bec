"""The binary COPY encoding, checked field by field against the format's definition."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from soundstream.core.fields import Features
from soundstream.core.records import Extracted, frame_times_us
from soundstream.store import pgcopy


def extracted(sensor: str, n: int, n_mels: int = 3, n_mfcc: int = 2) -> Extracted:
    rng = np.random.default_rng(n)
    col = lambda: rng.standard_normal(n).astype(np.float32)  # noqa: E731
    features = Features(
        *(col() for _ in pgcopy.SCALARS),
        mel=rng.standard_normal((n, n_mels)).astype(np.float32),
        mfcc=rng.standard_normal((n, n_mfcc)).astype(np.float32),
    )
    return Extracted(1, sensor, 42, 1_767_225_600_123_456_789, 16000, 0, 0, features)


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


@given(st.integers(0, 20), st.text("abcXYZ019._-", min_size=1, max_size=64))
def test_rows_decode_to_the_features(n: int, sensor: str) -> None:
    e = extracted(sensor, n)
    times_us = frame_times_us(e.start_ns, n, 512, 16000)
    rows = decode(b"".join(pgcopy.encode([(e, times_us), (e, times_us)])))
    assert len(rows) == 2 * n
    times = times_us - pgcopy.PG_EPOCH_US
    for i, row in enumerate(rows[:n]):
        assert len(row) == len(pgcopy.COLUMNS)
        assert row[0] == sensor.encode()
        assert struct.unpack(">q", row[1])[0] == times[i]
        assert struct.unpack(">q", row[2])[0] == 42
        for k, name in enumerate(pgcopy.SCALARS):
            assert struct.unpack(">f", row[3 + k])[0] == getattr(e.features, name)[i]
        assert real_array(row[10]) == e.features.mel[i].tolist()
        assert real_array(row[11]) == e.features.mfcc[i].tolist()


def test_an_empty_batch_is_a_valid_stream() -> None:
    assert decode(b"".join(pgcopy.encode([]))) == []
