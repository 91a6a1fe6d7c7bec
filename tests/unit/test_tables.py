from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from soundstream.core.fields import ARRAY_FIELDS, FEATURE_FIELDS, SCALARS
from soundstream.http import tables
from soundstream.store.read import Column, FeaturePage

WIDTHS = {"mel": 32, "mfcc": 13}
START = 1_790_000_000_000_000  # microseconds: late 2026
HOP = 32_000  # 512 samples at 16 kHz


def make_page(
    n: int, *, start: int = START, widths: Mapping[str, int] = WIDTHS, seed: int = 0
) -> FeaturePage:
    """Every field, as ``store.read.features`` gives them: scalars 1-D, arrays 2-D."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Column] = {
        name: rng.standard_normal(n).astype(np.float32) for name in SCALARS
    }
    for name in ARRAY_FIELDS:
        columns[name] = rng.standard_normal((n, widths[name])).astype(np.float32)
    return FeaturePage(start + HOP * np.arange(n, dtype=np.int64), columns, more=False)


def empty_page(fields: Sequence[str] = FEATURE_FIELDS) -> FeaturePage:
    """What ``store.read`` answers when no chunk holds the range: every column 1-D."""
    columns: dict[str, Column] = {name: np.empty(0, np.float32) for name in fields}
    return FeaturePage(np.empty(0, np.int64), columns, more=False)


def rows(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """A list column's rows as float32 arrays, read from its buffers (no Python
    floats in between, so NaN payloads survive)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not len(array):
        return []
    values = array.flatten().to_numpy()
    return np.split(values, np.cumsum(array.value_lengths().to_numpy())[:-1])


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal float32 bit patterns: -0.0 stays -0.0, each NaN keeps its payload."""
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))


def assert_page_equal(
    read: pa.Table, page: FeaturePage, fields: Sequence[str], sensor_ids: np.ndarray | None = None
) -> None:
    """``read`` holds the page's frames exactly, every float32 bit for bit."""
    expected = (["sensor_id"] if sensor_ids is not None else []) + ["ts", *fields]
    assert read.column_names == expected
    assert read.num_rows == len(page)
    if sensor_ids is not None:
        assert read.column("sensor_id").to_pylist() == list(sensor_ids)
    ts = read.column("ts").cast(pa.int64()).to_numpy()
    np.testing.assert_array_equal(ts, page.ts)
    for name in fields:
        column = read.column(name)
        if name in SCALARS:
            assert_same_bits(column.to_numpy(), np.asarray(page.columns[name]))
        else:
            got = rows(column)
            assert len(got) == len(page.columns[name])
            for row, want in zip(got, page.columns[name], strict=True):
                assert_same_bits(row, want)


def via_arrow(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.ipc.open_stream(b"".join(tables.arrow_stream(parts, schema))).read_all()


def via_parquet(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pq.read_table(io.BytesIO(b"".join(tables.parquet_stream(parts, schema))))


def test_column_types() -> None:
    page = make_page(10)
    ids = np.array(["s1"] * 10)
    table = tables.table(page, FEATURE_FIELDS, sensor_ids=ids)
    assert table.column_names == ["sensor_id", "ts", *FEATURE_FIELDS]
    assert table.schema.field("sensor_id").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    for name in SCALARS:
        assert table.schema.field(name).type == pa.float32()
    for name, width in WIDTHS.items():
        assert table.schema.field(name).type == pa.list_(pa.float32(), width)
    assert table.schema.equals(tables.schema(FEATURE_FIELDS, WIDTHS, with_sensor_id=True))
    assert tables.table(page, FEATURE_FIELDS).schema.equals(tables.schema(FEATURE_FIELDS, WIDTHS))


def test_columns_wrap_the_page_buffers() -> None:
    page = make_page(100)
    table = tables.table(page, ["rms", "mel"])
    ts = page.ts
    rms = page.columns["rms"]
    mel = page.columns["mel"]
    assert isinstance(rms, np.ndarray)
    assert isinstance(mel, np.ndarray)
    assert table.column("ts").chunk(0).buffers()[1].address == ts.ctypes.data
    assert table.column("rms").chunk(0).buffers()[1].address == rms.ctypes.data
    assert table.column("mel").chunk(0).values.buffers()[1].address == mel.ctypes.data


def test_varying_widths_are_variable_lists() -> None:
    page = make_page(3)
    page.columns["mel"] = [np.arange(w, dtype=np.float32) for w in (32, 40, 32)]
    table = tables.table(page, ["mel", "mfcc"])
    assert table.schema.field("mel").type == pa.list_(pa.float32())
    assert table.schema.field("mfcc").type == pa.list_(pa.float32(), 13)
    assert [len(row) for row in rows(table.column("mel"))] == [32, 40, 32]
    assert_page_equal(table, page, ["mel", "mfcc"])
    assert_page_equal(pq.read_table(io.BytesIO(tables.parquet_file(table))), page, ["mel", "mfcc"])
    assert_page_equal(via_arrow([table], table.schema), page, ["mel", "mfcc"])


def test_per_frame_arrays_of_one_width_are_fixed_size() -> None:
    page = make_page(4)
    page.columns["mfcc"] = [np.full(13, k, np.float32) for k in range(4)]
    table = tables.table(page, ["mfcc"])
    assert table.schema.field("mfcc").type == pa.list_(pa.float32(), 13)
    assert_page_equal(table, page, ["mfcc"])


def test_round_trip_through_both_formats() -> None:
    page = make_page(500, seed=3)
    rms = page.columns["rms"]
    assert isinstance(rms, np.ndarray)
    rms[[0, 7]] = [np.nan, np.inf]
    ids = np.array(["sensor-a"] * 500)
    table = tables.table(page, FEATURE_FIELDS, sensor_ids=ids)
    assert_page_equal(via_arrow([table], table.schema), page, FEATURE_FIELDS, ids)
    assert_page_equal(via_parquet([table], table.schema), page, FEATURE_FIELDS, ids)
    read = pq.read_table(io.BytesIO(tables.parquet_file(table)))
    assert_page_equal(read, page, FEATURE_FIELDS, ids)
    assert read.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert read.schema.field("mel").type.list_size == 32
    assert read.schema.field("sensor_id").type == pa.dictionary(pa.int32(), pa.string())


def test_pandas_reads_the_parquet_file() -> None:
    pd = pytest.importorskip("pandas")
    page = make_page(50, seed=4)
    table = tables.table(page, ["rms", "mel"], sensor_ids=np.array(["a", "b"] * 25))
    frame = pd.read_parquet(io.BytesIO(tables.parquet_file(table)))
    assert list(frame.columns) == ["sensor_id", "ts", "rms", "mel"]
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"
    np.testing.assert_array_equal(frame["ts"].array.asi8, page.ts)
    assert frame["rms"].dtype == np.float32
    np.testing.assert_array_equal(frame["rms"].to_numpy(), page.columns["rms"])
    np.testing.assert_array_equal(np.stack(frame["mel"].to_list()), page.columns["mel"])
    assert list(frame["sensor_id"]) == ["a", "b"] * 25


def test_polars_reads_both_formats() -> None:
    """Several pages, each with its own sensor dictionary, as a stream and a file."""
    pl = pytest.importorskip("polars")
    pages = [make_page(n, start=START + HOP * 100 * k, seed=k) for k, n in enumerate((20, 5))]
    ids = [np.array(["a", "b"] * 10), np.array(["c"] * 5)]
    parts = [
        tables.table(page, ["mfcc", "zcr"], sensor_ids=i)
        for page, i in zip(pages, ids, strict=True)
    ]
    schema = tables.schema(["mfcc", "zcr"], WIDTHS, with_sensor_id=True)
    for frame in (
        pl.read_ipc_stream(io.BytesIO(b"".join(tables.arrow_stream(parts, schema)))),
        pl.read_parquet(io.BytesIO(b"".join(tables.parquet_stream(parts, schema)))),
        pl.read_parquet(io.BytesIO(tables.parquet_file(parts[0]))).vstack(
            pl.read_parquet(io.BytesIO(tables.parquet_file(parts[1])))
        ),
    ):
        assert frame.columns == ["sensor_id", "ts", "mfcc", "zcr"]
        assert frame.schema["ts"] == pl.Datetime("us", "UTC")
        assert frame.schema["mfcc"] == pl.Array(pl.Float32, 13)
        assert frame.schema["zcr"] == pl.Float32
        assert frame["sensor_id"].cast(pl.String).to_list() == ["a", "b"] * 10 + ["c"] * 5
        np.testing.assert_array_equal(
            frame["ts"].dt.epoch("us").to_numpy(), np.concatenate([p.ts for p in pages])
        )
        np.testing.assert_array_equal(
            frame["mfcc"].to_numpy(), np.concatenate([p.columns["mfcc"] for p in pages])
        )


def test_empty_page_has_typed_columns() -> None:
    page = empty_page()
    schema = tables.schema(FEATURE_FIELDS, WIDTHS)
    typed = tables.table(page, FEATURE_FIELDS, widths=WIDTHS)
    assert typed.num_rows == 0
    assert typed.schema.equals(schema)
    # Without the configured widths the page cannot tell them.
    untyped = tables.table(page, FEATURE_FIELDS)
    assert untyped.schema.field("mel").type == pa.list_(pa.float32())
    for read in (
        via_arrow([], schema),
        via_arrow([typed], schema),
        via_parquet([], schema),
        via_parquet([typed], schema),
        pq.read_table(io.BytesIO(tables.parquet_file(typed))),
    ):
        assert read.num_rows == 0
        assert read.column_names == ["ts", *FEATURE_FIELDS]
        assert read.schema.field("ts").type == pa.timestamp("us", tz="UTC")
        assert read.schema.field("rms").type == pa.float32()
        assert read.schema.field("mel").type.list_size == 32
        assert read.schema.field("mfcc").type.list_size == 13


def test_several_tables_make_one_stream_and_one_file() -> None:
    pages = [
        make_page(n, start=START + HOP * k * 1000, seed=k) for k, n in enumerate((7, 0, 1000, 3))
    ]
    ids = [np.array([f"s{k}"] * len(page)) for k, page in enumerate(pages)]
    parts = [
        tables.table(page, FEATURE_FIELDS, sensor_ids=i) for page, i in zip(pages, ids, strict=True)
    ]
    schema = tables.schema(FEATURE_FIELDS, WIDTHS, with_sensor_id=True)
    whole = FeaturePage(
        np.concatenate([page.ts for page in pages]),
        {name: np.concatenate([page.columns[name] for page in pages]) for name in FEATURE_FIELDS},
        more=False,
    )
    all_ids = np.concatenate(ids)
    assert_page_equal(via_arrow(parts, schema), whole, FEATURE_FIELDS, all_ids)
    assert_page_equal(via_parquet(parts, schema), whole, FEATURE_FIELDS, all_ids)
    data = b"".join(tables.parquet_stream(parts, schema))
    # A row group per table with rows.
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 3


def test_streams_send_as_they_go() -> None:
    """The schema (or the Parquet magic) before the first table is asked for, then a
    piece per table before the next is asked for."""
    schema = tables.schema(["rms"], WIDTHS)
    asked: list[int] = []

    def parts() -> Iterator[pa.Table]:
        for k in range(3):
            asked.append(k)
            yield tables.table(make_page(5, seed=k), ["rms"])

    stream = tables.arrow_stream(parts(), schema)
    first = next(stream)
    assert asked == []
    assert pa.ipc.read_schema(pa.py_buffer(first)).equals(schema)
    pieces = [first]
    for k in range(3):
        pieces.append(next(stream))
        assert asked == list(range(k + 1))
    pieces += list(stream)
    assert pa.ipc.open_stream(b"".join(pieces)).read_all().num_rows == 15
    assert pieces[-1] == b"\xff\xff\xff\xff\x00\x00\x00\x00"  # end of stream

    asked.clear()
    file = tables.parquet_stream(parts(), schema)
    assert next(file) == b"PAR1"
    assert asked == []
    pieces = [b"PAR1"]
    for k in range(3):
        pieces.append(next(file))
        assert asked == list(range(k + 1))
    pieces += list(file)
    assert pq.read_table(io.BytesIO(b"".join(pieces))).num_rows == 15


@pytest.mark.parametrize("form", ["arrow", "parquet"])
def test_incremental_writer_makes_what_the_streams_make(form: str) -> None:
    """For callers whose pages come from awaits: start, a piece per table, finish."""
    schema = tables.schema(["rms", "mel"], WIDTHS)
    parts = [tables.table(make_page(n, seed=n), ["rms", "mel"]) for n in (4, 0, 6)]
    writer = tables.IncrementalWriter(form, schema)
    with pytest.raises(RuntimeError, match="start"):
        writer.write(parts[0])
    pieces = [writer.start(), *(writer.write(part) for part in parts), writer.finish()]
    assert pieces[2] == b""  # a table without rows adds nothing
    stream = tables.arrow_stream if form == "arrow" else tables.parquet_stream
    assert b"".join(pieces) == b"".join(stream(parts, schema))
    with pytest.raises(RuntimeError, match="started"):
        writer.start()
    with pytest.raises(ValueError, match="need 'arrow' or 'parquet'"):
        tables.IncrementalWriter("csv", schema)


def test_sensor_id_column() -> None:
    page = make_page(6)
    ids = np.array(["b", "a", "b", "c", "a", "b"], dtype=object)
    table = tables.table(page, ["rms"], sensor_ids=ids)
    assert table.column_names == ["sensor_id", "ts", "rms"]
    assert table.column("sensor_id").to_pylist() == list(ids)
    single = tables.table(page, ["rms"], sensor_ids=np.full(6, "sensor-0001"))
    assert single.column("sensor_id").to_pylist() == ["sensor-0001"] * 6
    assert single.column("sensor_id").chunk(0).dictionary.to_pylist() == ["sensor-0001"]
    # UTF-8 bytes, as the routes hold ids, read back as text.
    as_bytes = tables.table(page, ["rms"], sensor_ids=np.array([s.encode() for s in ids]))
    assert as_bytes.column("sensor_id").to_pylist() == list(ids)
    with pytest.raises(ValueError, match="5 sensor ids for 6 frames"):
        tables.table(page, ["rms"], sensor_ids=ids[:5])


def test_fields_subset_and_order() -> None:
    page = make_page(8)
    fields = ["mfcc", "rolloff", "mel", "rms"]
    table = tables.table(page, fields)
    assert table.column_names == ["ts", *fields]
    assert table.schema.equals(tables.schema(fields, WIDTHS))
    assert_page_equal(via_arrow([table], table.schema), page, fields)
    assert_page_equal(via_parquet([table], table.schema), page, fields)


def test_ts_alone() -> None:
    page = make_page(9)
    table = tables.table(page, [])
    assert table.column_names == ["ts"]
    assert table.schema.equals(tables.schema([], WIDTHS))
    assert_page_equal(via_arrow([table], table.schema), page, [])
    assert_page_equal(via_parquet([table], table.schema), page, [])
    assert_page_equal(pq.read_table(io.BytesIO(tables.parquet_file(table))), page, [])


def test_stream_fits_other_widths_to_its_schema() -> None:
    """Chunks stored under other settings: cut or padded with nulls to the schema's
    width, as the CSV header fixes its cells."""
    schema = tables.schema(["mel"], {"mel": 4})
    page = make_page(3, widths={"mel": 4, "mfcc": 13})
    page.columns["mel"] = [np.arange(n, dtype=np.float32) for n in (2, 6, 4)]
    wide = make_page(2, widths={"mel": 5, "mfcc": 13})
    parts = [tables.table(page, ["mel"]), tables.table(wide, ["mel"])]
    wide_mel = wide.columns["mel"]
    assert isinstance(wide_mel, np.ndarray)
    expected = [[0, 1, None, None], [0, 1, 2, 3], [0, 1, 2, 3]]
    expected += [list(map(float, row[:4])) for row in wide_mel]
    for read in (via_arrow(parts, schema), via_parquet(parts, schema)):
        assert read.schema.field("mel").type.list_size == 4
        assert read.column("mel").to_pylist() == expected


def test_mismatched_columns_are_refused() -> None:
    schema = tables.schema(["rms"], WIDTHS)
    table = tables.table(make_page(2), ["zcr"])
    with pytest.raises(ValueError, match="columns"):
        list(tables.arrow_stream([table], schema))
    with pytest.raises(ValueError, match="unknown feature fields"):
        tables.schema(["rms", "loudness"], WIDTHS)


@st.composite
def pages(draw: st.DrawFn) -> tuple[FeaturePage, list[str], dict[str, int], np.ndarray | None]:
    """A page of 0..50 frames of any float32 (NaN, infinities, subnormals), some of
    the fields in any order, arrays of one width or (sometimes) of several."""
    n = draw(st.integers(0, 50))
    ts = np.sort(draw(arrays(np.int64, n, elements=st.integers(-(2**62), 2**62), unique=True)))
    fields = draw(st.permutations(FEATURE_FIELDS))[: draw(st.integers(0, len(FEATURE_FIELDS)))]
    widths = {name: draw(st.integers(1, 40)) for name in ARRAY_FIELDS}
    floats = st.floats(width=32)
    columns: dict[str, Column] = {}
    for name in fields:
        if name in SCALARS:
            columns[name] = draw(arrays(np.float32, n, elements=floats))
        elif n and draw(st.booleans()):
            columns[name] = [
                draw(arrays(np.float32, draw(st.integers(1, 40)), elements=floats))
                for _ in range(n)
            ]
        else:
            columns[name] = draw(arrays(np.float32, (n, widths[name]), elements=floats))
    ids = None
    if draw(st.booleans()):
        ids = np.array(
            draw(st.lists(st.sampled_from(["a", "b", "sensor-ä"]), min_size=n, max_size=n)),
            dtype=object,
        )
    return FeaturePage(ts, columns, more=False), list(fields), widths, ids


@given(pages())
def test_random_pages_round_trip(
    drawn: tuple[FeaturePage, list[str], dict[str, int], np.ndarray | None],
) -> None:
    page, fields, widths, ids = drawn
    table = tables.table(page, fields, sensor_ids=ids, widths=widths)
    assert_page_equal(table, page, fields, ids)
    assert_page_equal(via_arrow([table], table.schema), page, fields, ids)
    assert_page_equal(via_parquet([table], table.schema), page, fields, ids)
    assert_page_equal(pq.read_table(io.BytesIO(tables.parquet_file(table))), page, fields, ids)
