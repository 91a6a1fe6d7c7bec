"""A page of frames as a typed table, and tables as Arrow IPC streams and Parquet files.

For dataframe clients (pandas, polars, DuckDB, Spark): the answer carries its types,
UTC microsecond times, float32 features and fixed-width mel/mfcc lists, so nothing
is parsed back from text and every float32 arrives bit for bit. Pure: numpy and
pyarrow, no I/O. The streams come as byte pieces to send as they are made, so a
long range is answered in constant memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from soundstream.core.fields import ARRAY_FIELDS, FEATURE_FIELDS
from soundstream.store.read import Column, FeaturePage

# For annotations in modules that do not import pyarrow.
Table: TypeAlias = pa.Table
Schema: TypeAlias = pa.Schema

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"

TIMESTAMP = pa.timestamp("us", tz="UTC")
# Few distinct sensors per answer: indices and one copy of each name.
SENSOR_ID = pa.dictionary(pa.int32(), pa.string())
VALUE = pa.float32()
COUNT = pa.int64()
# mel/mfcc when a page holds more than one width.
VARIABLE = pa.list_(VALUE)

# zstd, at its default level: on a 10-minute page of 16 kHz frames (18,750 frames,
# every field, mel 32 / mfcc 13, 4.1 MB of column data) it makes 3.33 MB, against
# 3.81 MB with snappy and 4.18 MB without compression, in about 18 ms against 13 ms,
# and reads back in 9 ms against 6 ms: an eighth fewer bytes on the wire for a few
# milliseconds. Higher levels gain under 0.2 %. Only the sensor id is dictionary
# encoded: float features rarely repeat, and pyarrow's default of trying every
# column made 4.64 MB in 70 ms.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": ["sensor_id"]}


def table(
    page: FeaturePage,
    fields: Sequence[str],
    *,
    sensor_ids: np.ndarray | None = None,
    widths: Mapping[str, int] | None = None,
    count: np.ndarray | None = None,
) -> pa.Table:
    """``sensor_id`` (when ``sensor_ids`` gives one per frame), ``ts``, then ``fields``
    in the order asked for.

    Every column wraps the page's numpy buffers without copying them where the page
    holds them contiguous. mel/mfcc are fixed-width lists when the page has one
    width, variable lists when chunks stored under other settings meet in it;
    ``widths`` (the configured ones) types them in a page without frames, which
    otherwise cannot tell.
    """
    n = len(page)
    names: list[str] = []
    arrays: list[pa.Array] = []
    if sensor_ids is not None:
        if len(sensor_ids) != n:
            raise ValueError(f"{len(sensor_ids)} sensor ids for {n} frames")
        names.append("sensor_id")
        arrays.append(_sensor_ids(sensor_ids))
    names.append("ts")
    arrays.append(pa.array(np.ascontiguousarray(page.ts, dtype=np.int64), TIMESTAMP))
    if count is not None:  # frames in each bucket of a downsampled answer
        names.append("count")
        arrays.append(pa.array(np.ascontiguousarray(count, dtype=np.int64), COUNT))
    for name in fields:
        column = page.columns[name]
        names.append(name)
        if name in ARRAY_FIELDS:
            arrays.append(_lists(column, None if widths is None else widths.get(name)))
        else:
            arrays.append(pa.array(np.ascontiguousarray(column, dtype=np.float32), VALUE))
    return pa.Table.from_arrays(arrays, names=names)


def schema(
    fields: Sequence[str],
    widths: Mapping[str, int],
    *,
    with_sensor_id: bool = False,
    with_count: bool = False,
) -> pa.Schema:
    """What ``table`` gives for pages of the configured ``widths``: for an answer
    without frames, and for a stream, which states its schema before any page.

    An array field left out of ``widths`` is a variable list, for a caller that
    knows its widths vary.
    """
    unknown = [name for name in fields if name not in FEATURE_FIELDS]
    if unknown:
        raise ValueError(f"unknown feature fields: {unknown}")
    columns = [("sensor_id", SENSOR_ID)] if with_sensor_id else []
    columns.append(("ts", TIMESTAMP))
    if with_count:
        columns.append(("count", COUNT))
    for name in fields:
        if name not in ARRAY_FIELDS:
            columns.append((name, VALUE))
        elif name in widths:
            columns.append((name, pa.list_(VALUE, widths[name])))
        else:
            columns.append((name, VARIABLE))
    return pa.schema(columns)


def arrow_stream(tables: Iterable[pa.Table], schema: pa.Schema) -> Iterator[bytes]:
    """An Arrow IPC stream: the schema message at once, before the first table is
    asked for, then each table's record batches as they come, then the end marker."""
    return _pieces(IncrementalWriter("arrow", schema), tables)


def parquet_file(table: pa.Table) -> bytes:
    """One table as a whole Parquet file, with the column types it has."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return bytes(sink.getvalue().to_pybytes())


def parquet_stream(tables: Iterable[pa.Table], schema: pa.Schema) -> Iterator[bytes]:
    """One Parquet file made while the tables come: the magic number at once, a row
    group per table (so the caller's page size sets the row groups'), then the
    footer, which indexes the row groups."""
    return _pieces(IncrementalWriter("parquet", schema), tables)


def _pieces(writer: IncrementalWriter, tables: Iterable[pa.Table]) -> Iterator[bytes]:
    yield writer.start()
    for part in tables:
        piece = writer.write(part)
        if piece:
            yield piece
    yield writer.finish()


class IncrementalWriter:
    """An Arrow IPC stream or a Parquet file written a table at a time, each call
    returning the bytes it made: for a caller whose pages come from ``await`` and so
    cannot hand over an iterable. Nothing is kept between calls.

    Tables are fitted to ``schema`` (see ``_conform``): a stream cannot change its
    schema once sent, and a file has one.
    """

    def __init__(self, form: str, schema: pa.Schema) -> None:
        if form not in {"arrow", "parquet"}:
            raise ValueError(f"form {form!r}: need 'arrow' or 'parquet'")
        self.form = form
        self.schema = schema
        self._sink: _Sink | None = None
        self._writer: Any = None

    def start(self) -> bytes:
        """The schema message (Arrow) or the magic number (Parquet)."""
        if self._sink is not None:
            raise RuntimeError("the writer has started already")
        if self.form == "arrow":
            # pyarrow's writer sends the schema only with the first batch; send it
            # now, and drop the writer's copy, checked byte for byte, from its output.
            head = self.schema.serialize().to_pybytes()
            self._sink = _Sink(skip=head)
            self._writer = pa.ipc.new_stream(self._sink, self.schema)
            return bytes(head)
        self._sink = _Sink()
        self._writer = pq.ParquetWriter(self._sink, self.schema, **PARQUET_OPTIONS)
        return self._sink.drain()

    def write(self, table: pa.Table) -> bytes:
        """The table's record batches, or its row group; nothing for no rows."""
        sink = self._started()
        if table.num_rows:
            self._writer.write_table(_conform(table, self.schema))
        return sink.drain()

    def finish(self) -> bytes:
        """The end-of-stream marker (Arrow) or the footer (Parquet)."""
        sink = self._started()
        self._writer.close()
        return sink.drain()

    def _started(self) -> _Sink:
        if self._sink is None:
            raise RuntimeError("start() the writer first")
        return self._sink


class _Sink:
    """A file for pyarrow's writers that hands over what was written since the last
    ``drain``, so that nothing builds up while a stream is written.

    ``skip``: bytes the writer will write first that were sent already.
    """

    def __init__(self, skip: bytes = b"") -> None:
        self._data = bytearray()
        self._skip = skip
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._data += view
        return view.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        if self._skip and self._data:
            if not self._data.startswith(self._skip):
                raise RuntimeError("the Arrow writer began with another schema than was sent")
            del self._data[: len(self._skip)]
            self._skip = b""
        out = bytes(self._data)
        self._data.clear()
        return out


def _sensor_ids(sensor_ids: np.ndarray) -> pa.Array:
    """Dictionary encoded; a page of one sensor, the usual case, without hashing
    every frame's id. Ids may be str or UTF-8 bytes."""
    ids = np.asarray(sensor_ids)
    if not len(ids):  # whatever its dtype: np.array([]) is float64
        return pa.DictionaryArray.from_arrays(np.zeros(0, np.int32), pa.array([], pa.string()))
    if bool((ids == ids[0]).all()):
        indices = np.zeros(len(ids), np.int32)
        return pa.DictionaryArray.from_arrays(indices, pa.array([ids[0]], pa.string()))
    return pa.array(ids, pa.string()).dictionary_encode()


def _lists(column: Column, width: int | None) -> pa.Array:
    """mel/mfcc: a fixed-size list over the page's own (frames, width) buffer, or
    variable lists when the frames' widths differ (the rare path, by frame)."""
    if isinstance(column, np.ndarray) and column.ndim == 2:
        return _fixed(column)
    if len(column) == 0:
        return pa.array([], VARIABLE if width is None else pa.list_(VALUE, width))
    rows = list(column)
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    if (lengths == lengths[0]).all():
        return _fixed(np.stack(rows))
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(rows).astype(np.float32, copy=False)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, VALUE))


def _fixed(values: np.ndarray) -> pa.Array:
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, VALUE), values.shape[1])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s types: a page's tables match it already, unless
    its mel/mfcc have other widths than configured. Those are cut or padded with
    nulls to the schema's width, as a CSV header fixes the number of cells."""
    if table.schema.equals(schema):
        return table
    if table.schema.names != schema.names:
        raise ValueError(f"columns {table.schema.names} where the schema has {schema.names}")
    columns = []
    for column, field in zip(table.columns, schema, strict=True):
        if column.type.equals(field.type):
            columns.append(column)
        elif pa.types.is_fixed_size_list(field.type):
            chunks = [_fit(chunk, field.type.list_size) for chunk in column.chunks]
            columns.append(pa.chunked_array(chunks, field.type))
        else:
            columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _fit(lists: pa.Array, width: int) -> pa.Array:
    """Lists of float32 as fixed-size lists of ``width``: each cut, or padded with
    nulls."""
    lists = lists.cast(VARIABLE)
    lengths = lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    values = lists.flatten().to_numpy(zero_copy_only=False)
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    k = np.arange(width)
    present = k < lengths[:, None]
    out = np.zeros((len(lengths), width), np.float32)
    out[present] = values[(starts[:, None] + k)[present]]
    child = pa.array(out.reshape(-1), VALUE, mask=~present.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(child, width)
