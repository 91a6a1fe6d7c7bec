"""A page of frames as each answer format: JSON frames, NDJSON lines, CSV.

Pure: numpy and orjson. Times are formatted for a whole column at once, and
numbers leave through orjson's numpy support, each float32 as the shortest decimal
that reads back as itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from soundstream.core.fields import SCALARS
from soundstream.core.timefmt import format_micros
from soundstream.store.read import Column, FeaturePage

NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class Rows:
    """What an answer prints: a page's rows, the feature fields asked for, and the
    per-row columns that come before them when there are any: the sensor of each
    row (several-sensor answers; ids are ``[A-Za-z0-9._-]``, printed as they are)
    and the frames in each bucket (downsampled answers)."""

    page: FeaturePage
    fields: Sequence[str]
    sensor_ids: list[bytes] | None = None
    count: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.page)


def json_page(rows: Rows, following: str | None, *, sensor_id: str | None = None) -> bytes:
    """``{"sensor_id": ..., "frames": [{"ts": ..., <fields>}, ...], "next": ...}``; the
    top-level ``sensor_id`` only for a one-sensor answer."""
    head = orjson.dumps({"sensor_id": sensor_id})[:-1] + b"," if sensor_id is not None else b"{"
    tail = orjson.dumps({"next": following})[1:]
    return head + b'"frames":[' + _objects(rows, b",", b"") + b"]," + tail


def ndjson(rows: Rows) -> bytes:
    """One JSON object per row and line."""
    return _objects(rows, b"", b"\n")


def _objects(rows: Rows, between: bytes, after: bytes) -> bytes:
    """Each row as a JSON object (the leading columns, ``ts``, then the fields in the
    order asked for), objects joined by ``between``, each followed by ``after``.

    Every column is printed by one orjson call and cut into its values; the values
    and the constant pieces between them are then laid out in one list by slice
    assignment and joined once, so nothing runs per row in Python. A string column's
    quotes belong to the keys around it.
    """
    n = len(rows)
    if not n:
        return b""
    page = rows.page
    columns: list[tuple[str, list[bytes], bool]] = []  # (name, values, is a string)
    if rows.sensor_ids is not None:
        columns.append(("sensor_id", rows.sensor_ids, True))
    columns.append(("ts", format_micros(page.ts), True))
    if rows.count is not None:
        columns.append(("count", _values(rows.count), False))
    columns += [(name, _values(page.columns[name]), False) for name in rows.fields]
    width = 2 * len(columns) + 1  # (key, value)..., closing
    parts: list[bytes] = [b""] * (n * width)
    quoted_before = False
    for i, (name, values, quoted) in enumerate(columns):
        key = (b'"' if quoted_before else b"") + (b"," if i else b"{")
        key += b'"' + name.encode() + b'":' + (b'"' if quoted else b"")
        parts[2 * i :: width] = [key if i else between + key] * n
        parts[2 * i + 1 :: width] = values
        quoted_before = quoted
    parts[width - 1 :: width] = [(b'"' if quoted_before else b"") + b"}" + after] * n
    parts[0] = parts[0][len(between) :]  # nothing before the first object
    return b"".join(parts)


def _values(column: Column) -> list[bytes]:
    """Each element of a column as JSON: numbers, or arrays of numbers."""
    text = orjson.dumps(column, option=NUMPY)
    if isinstance(column, np.ndarray) and column.ndim == 1:
        return text[1:-1].split(b",")
    return [b"[" + row + b"]" for row in text[2:-2].split(b"],[")]


def csv(rows: Rows, widths: dict[str, int], *, header: bool = True) -> bytes:
    """RFC 4180: a header row (unless this continues a stream), then one row per frame:
    the leading columns, ts, the scalars, then each array spread over ``<name>_<k>``
    columns (cut or padded with empty cells to the width)."""
    page, fields = rows.page, rows.fields
    scalars = [name for name in fields if name in SCALARS]
    arrays = [name for name in fields if name in widths]
    names = ["sensor_id"] if rows.sensor_ids is not None else []
    names += ["ts", *(["count"] if rows.count is not None else []), *scalars]
    names += [f"{name}_{k}" for name in arrays for k in range(widths[name])]
    lines = [",".join(names).encode()] if header else []
    cells = format_micros(page.ts)
    if rows.sensor_ids is not None:
        cells = [
            sensor + b"," + stamp for sensor, stamp in zip(rows.sensor_ids, cells, strict=True)
        ]
    if rows.count is not None and len(page):
        counts = _values(rows.count)
        cells = [row + b"," + count for row, count in zip(cells, counts, strict=True)]
    if len(page) and (scalars or arrays):
        blocks = [np.column_stack([page.columns[name] for name in scalars])] if scalars else []
        blocks += [_padded(page.columns[name], widths[name]) for name in arrays]
        table = np.hstack(blocks).astype(np.float32, copy=False)
        # One orjson call prints the whole table, "[[a,b],[c,d]]"; padding (NaN)
        # prints as null, which becomes an empty cell.
        text = orjson.dumps(table, option=NUMPY)[2:-2].replace(b"null", b"")
        cells = [row + b"," + values for row, values in zip(cells, text.split(b"],["), strict=True)]
    lines += cells
    if not lines:
        return b""
    lines.append(b"")
    return b"\r\n".join(lines)


def _padded(values: Column, width: int) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.shape[1] == width:
        return values
    table = np.full((len(values), width), np.nan, np.float32)
    for row, value in zip(table, values, strict=True):
        cut = value[:width]
        row[: len(cut)] = cut
    return table
