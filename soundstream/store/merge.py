"""Several sensors' pages as one, in (ts, sensor) order.

Each sensor is read on its own (one key range of the table each, the same query as
the single-sensor route); the pages are merged with numpy. A page of ``limit`` rows
needs at most ``limit`` rows of each sensor, from where the previous page stopped:
after ``ts`` for the sensors up to the one the last row came from, at ``ts`` itself
for the ones after it (they sort after it at the same instant).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from soundstream.core.timefmt import from_micros
from soundstream.store.read import Column, FeaturePage

_MICROSECOND = timedelta(microseconds=1)

# Reads one sensor's next page: (sensor_id, strictly after this instant or None).
ReadOne = Callable[[str, datetime | None], Awaitable[FeaturePage]]


@dataclass(frozen=True, slots=True)
class MergedPage:
    """Rows of several sensors: ``sensor[k]`` indexes the query's sensors."""

    page: FeaturePage
    sensor: np.ndarray  # int, one per row

    def __len__(self) -> int:
        return len(self.page)


async def read_merged(
    read_one: ReadOne,
    sensors: Sequence[str],
    *,
    limit: int,
    after: tuple[int, int] | None,
) -> MergedPage:
    """The next ``limit`` rows of ``sensors`` (sorted ids) after ``after`` = (ts µs,
    sensor index) of the last row already returned."""
    pages: list[FeaturePage] = []
    for k, sensor_id in enumerate(sensors):
        since: datetime | None = None
        if after is not None:
            ts_us, last = after
            since = from_micros(ts_us if k <= last else ts_us - 1)
        pages.append(await read_one(sensor_id, since))
    return merge(pages, limit)


def merge(pages: Sequence[FeaturePage], limit: int) -> MergedPage:
    """The first ``limit`` rows of ``pages`` (page k from sensor k) by (ts, k)."""
    ts = np.concatenate([p.ts for p in pages]) if pages else np.empty(0, np.int64)
    sensor = np.repeat(np.arange(len(pages)), [len(p) for p in pages])
    order = np.lexsort((sensor, ts))[:limit]
    more = len(ts) > limit or any(p.more for p in pages)
    names = list(pages[0].columns) if pages else []
    columns = {name: _take([p.columns[name] for p in pages], order) for name in names}
    return MergedPage(FeaturePage(ts[order], columns, more), sensor[order])


def _take(parts: list[Column], order: np.ndarray) -> Column:
    filled = [part for part in parts if len(part)]  # an empty page's columns are 1-D
    if not filled:
        return parts[0][:0] if isinstance(parts[0], np.ndarray) else []
    if all(isinstance(part, np.ndarray) for part in filled):
        arrays = [part for part in filled if isinstance(part, np.ndarray)]
        if len({part.shape[1:] for part in arrays}) == 1:
            merged: np.ndarray = np.concatenate(arrays)[order]
            return merged
    rows = [row for part in filled for row in part]
    return [rows[j] for j in order]
