"""A page of frames as each answer format: JSON frames, NDJSON lines, CSV.

Pure: numpy and orjson. Times are formatted for a whole column at once, and
numbers leave through orjson's numpy support, each float32 as the shortest decimal
that reads back as itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson

from soundstream.core.fields import SCALARS
from soundstream.core.timefmt import format_micros
from soundstream.store.read import Column, FeaturePage

NUMPY = orjson.OPT_SERIALIZE_NUMPY


def frames(page: FeaturePage, fields: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per frame: ``ts`` first, then the fields in the order asked for."""
    columns: dict[str, Iterable[Any]] = {"ts": format_micros(page.ts)}
    for name in fields:
        columns[name] = page.columns[name]
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


def ndjson(page: FeaturePage, fields: Sequence[str]) -> bytes:
    return b"".join(orjson.dumps(frame, option=NUMPY) + b"\n" for frame in frames(page, fields))


def csv(page: FeaturePage, fields: Sequence[str], widths: dict[str, int]) -> bytes:
    """RFC 4180: a header row, then one row per frame: ts, the scalars, then each array
    spread over ``<name>_<k>`` columns (cut or padded with empty cells to the width)."""
    scalars = [name for name in fields if name in SCALARS]
    arrays = [name for name in fields if name in widths]
    header = ["ts", *scalars]
    header += [f"{name}_{k}" for name in arrays for k in range(widths[name])]
    lines = [",".join(header).encode()]
    stamps = [stamp.encode() for stamp in format_micros(page.ts)]
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
