"""A page of frames as each answer format: JSON frames, NDJSON lines, CSV.

Pure: numpy and orjson. Times are formatted for a whole column at once, and
numbers leave through orjson's numpy support, each float32 as the shortest decimal
that reads back as itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from soundstream.core.fields import SCALARS
from soundstream.core.timefmt import format_micros
from soundstream.store.read import Column, FeaturePage

NUMPY = orjson.OPT_SERIALIZE_NUMPY


def json_page(
    page: FeaturePage, fields: Sequence[str], sensor_id: str, following: str | None
) -> bytes:
    """``{"sensor_id": ..., "frames": [{"ts": ..., <fields>}, ...], "next": ...}``."""
    head = orjson.dumps({"sensor_id": sensor_id})[:-1]
    tail = orjson.dumps({"next": following})[1:]
    return head + b',"frames":[' + _objects(page, fields, b",", b"") + b"]," + tail


def ndjson(page: FeaturePage, fields: Sequence[str]) -> bytes:
    """One JSON object per frame and line."""
    return _objects(page, fields, b"", b"\n")


def _objects(page: FeaturePage, fields: Sequence[str], between: bytes, after: bytes) -> bytes:
    """Each frame as a JSON object (``ts`` first, then the fields in the order asked
    for), objects joined by ``between``, each followed by ``after``.

    Every column is printed by one orjson call and cut into its values; the values
    and the constant pieces between them are then laid out in one list by slice
    assignment and joined once, so nothing runs per frame in Python.
    """
    n = len(page)
    if not n:
        return b""
    columns = [format_micros(page.ts), *(_values(page.columns[name]) for name in fields)]
    keys = [b'","' + fields[0].encode() + b'":'] if fields else []
    keys += [b',"' + name.encode() + b'":' for name in fields[1:]]
    closing = b'"}' if not fields else b"}"
    width = 2 * len(columns) + 1  # opening, ts, (key, value)..., closing
    parts: list[bytes] = [b""] * (n * width)
    parts[0::width] = [between + b'{"ts":"'] * n
    parts[0] = b'{"ts":"'
    for i, (key, values) in enumerate(zip([b"", *keys], columns, strict=True)):
        if i:
            parts[2 * i :: width] = [key] * n
        parts[2 * i + 1 :: width] = values
    parts[width - 1 :: width] = [closing + after] * n
    return b"".join(parts)


def _values(column: Column) -> list[bytes]:
    """Each element of a column as JSON: numbers, or arrays of numbers."""
    text = orjson.dumps(column, option=NUMPY)
    if isinstance(column, np.ndarray) and column.ndim == 1:
        return text[1:-1].split(b",")
    return [b"[" + row + b"]" for row in text[2:-2].split(b"],[")]


def csv(page: FeaturePage, fields: Sequence[str], widths: dict[str, int]) -> bytes:
    """RFC 4180: a header row, then one row per frame: ts, the scalars, then each array
    spread over ``<name>_<k>`` columns (cut or padded with empty cells to the width)."""
    scalars = [name for name in fields if name in SCALARS]
    arrays = [name for name in fields if name in widths]
    header = ["ts", *scalars]
    header += [f"{name}_{k}" for name in arrays for k in range(widths[name])]
    lines = [",".join(header).encode()]
    stamps = format_micros(page.ts)
    if len(page) and len(header) > 1:
        blocks = [np.column_stack([page.columns[name] for name in scalars])] if scalars else []
        blocks += [_padded(page.columns[name], widths[name]) for name in arrays]
        table = np.hstack(blocks).astype(np.float32, copy=False)
        # One orjson call prints the whole table, "[[a,b],[c,d]]"; padding (NaN)
        # prints as null, which becomes an empty cell.
        text = orjson.dumps(table, option=NUMPY)[2:-2].replace(b"null", b"")
        stamps = [
            stamp + b"," + cells for stamp, cells in zip(stamps, text.split(b"],["), strict=True)
        ]
    lines += stamps
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
