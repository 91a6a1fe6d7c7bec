"""PostgreSQL's binary COPY format for frame rows, built with numpy.

Encoding frames one Python value at a time cost more of the main process than
anything else in the pipeline; every frame row has the same layout, so a chunk's
rows are one numpy structured array, filled column by column and written out as
bytes. Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from soundstream.core.fields import SCALARS
from soundstream.core.records import Extracted

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
FLOAT4_OID = 700
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01, where timestamptz counts from
# The column order every row is written in.
COLUMNS = ("sensor_id", "ts", "seq", *SCALARS, "mel", "mfcc")


def _array_field(name: str, n: int) -> list[tuple[Any, ...]]:
    """A one-dimensional real[]: length word, array header, then (length, value) pairs."""
    element = np.dtype([("len", ">i4"), ("v", ">f4")])
    return [
        (f"{name}_len", ">i4"),
        (f"{name}_head", ">i4", (5,)),  # ndim, has-nulls, element oid, size, lower bound
        (name, element, (n,)),
    ]


def _row_dtype(sensor_bytes: int, n_mels: int, n_mfcc: int) -> np.dtype[np.void]:
    fields: list[tuple[Any, ...]] = [
        ("n_fields", ">i2"),
        ("sensor_id_len", ">i4"),
        ("sensor_id", f"S{sensor_bytes}"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("seq_len", ">i4"),
        ("seq", ">i8"),
    ]
    for name in SCALARS:
        fields += [(f"{name}_len", ">i4"), (name, ">f4")]
    fields += _array_field("mel", n_mels) + _array_field("mfcc", n_mfcc)
    return np.dtype(fields)


def encode_chunk(e: Extracted, times_us: np.ndarray) -> bytes:
    """One chunk's frame rows (at ``times_us``), without the file header and trailer."""
    f = e.features
    n = len(f)
    if not n:
        return b""
    sensor = e.sensor_id.encode("ascii")  # sensor ids are ASCII by the wire format
    n_mels, n_mfcc = f.mel.shape[1], f.mfcc.shape[1]
    rows = np.empty(n, dtype=_row_dtype(len(sensor), n_mels, n_mfcc))
    rows["n_fields"] = len(COLUMNS)
    rows["sensor_id_len"] = len(sensor)
    rows["sensor_id"] = sensor
    rows["ts_len"] = 8
    rows["ts"] = times_us - PG_EPOCH_US
    rows["seq_len"] = 8
    rows["seq"] = e.seq
    for name in SCALARS:
        rows[f"{name}_len"] = 4
        rows[name] = getattr(f, name)
    for name, values in (("mel", f.mel), ("mfcc", f.mfcc)):
        width = values.shape[1]
        rows[f"{name}_len"] = 20 + 8 * width
        rows[f"{name}_head"] = (1, 0, FLOAT4_OID, width, 1)
        rows[name]["len"] = 4
        rows[name]["v"] = values
    return rows.tobytes()


def encode(timed: Iterable[tuple[Extracted, np.ndarray]]) -> Iterable[bytes]:
    """The whole COPY stream for chunks and their frame times, as parts in order."""
    yield HEADER
    for e, times_us in timed:
        yield encode_chunk(e, times_us)
    yield TRAILER
