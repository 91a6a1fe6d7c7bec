"""Several sensors' pages merged in (ts, sensor) order, and resumed where a page
stopped: the same rows as one big merge, whatever the page size."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from soundstream.core.timefmt import to_micros
from soundstream.store.merge import merge, read_merged
from soundstream.store.read import FeaturePage

START = datetime(1970, 1, 1, tzinfo=UTC)  # the tests' ts are µs since the epoch


def page(ts: list[int], *, more: bool = False, width: int = 3) -> FeaturePage:
    stamps = np.array(sorted(ts), np.int64)
    values = stamps.astype(np.float32)
    mel = np.repeat(values[:, None], width, axis=1)
    return FeaturePage(stamps, {"rms": values, "mel": mel}, more)


def test_rows_come_in_ts_then_sensor_order() -> None:
    merged = merge([page([10, 30]), page([10, 20])], limit=10)
    assert merged.page.ts.tolist() == [10, 10, 20, 30]
    assert merged.sensor.tolist() == [0, 1, 1, 0]
    assert merged.page.columns["rms"].tolist() == [10, 10, 20, 30]
    assert merged.page.columns["mel"].shape == (4, 3)
    assert not merged.page.more


def test_a_cut_page_says_there_is_more() -> None:
    merged = merge([page([1, 2, 3]), page([])], limit=2)
    assert merged.page.ts.tolist() == [1, 2] and merged.page.more
    assert merge([page([1], more=True)], limit=5).page.more


def test_an_empty_sensor_keeps_the_array_columns_whole() -> None:
    empty = FeaturePage(
        np.empty(0, np.int64),
        {"rms": np.empty(0, np.float32), "mel": np.empty(0, np.float32)},
        False,
    )
    merged = merge([empty, page([5])], limit=5)
    assert isinstance(merged.page.columns["mel"], np.ndarray)
    assert merged.page.columns["mel"].shape == (1, 3)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 40), unique=True, max_size=25), min_size=1, max_size=4),
    st.integers(1, 7),
)
def test_paging_gives_the_rows_of_one_big_merge(sensors: list[list[int]], limit: int) -> None:
    stored = [sorted(ts) for ts in sensors]

    async def read_one_of(index: dict[str, int]) -> list[tuple[int, int]]:
        async def read_one(sensor_id: str, since: datetime | None) -> FeaturePage:
            after = -1 if since is None else to_micros(since)
            rows = [t for t in stored[index[sensor_id]] if t > after]
            return page(rows[:limit], more=len(rows) > limit)

        names = sorted(index)
        seen: list[tuple[int, int]] = []
        after: tuple[int, int] | None = None
        for _ in range(1000):
            merged = await read_merged(read_one, names, limit=limit, after=after)
            seen += list(zip(merged.page.ts.tolist(), merged.sensor.tolist(), strict=True))
            if not merged.page.more:
                return seen
            after = (int(merged.page.ts[-1]), int(merged.sensor[-1]))
        raise AssertionError("paging did not end")

    index = {f"s{k}": k for k in range(len(stored))}
    everything = sorted((t, k) for k, ts in enumerate(stored) for t in ts)
    assert anyio.run(read_one_of, index) == everything
