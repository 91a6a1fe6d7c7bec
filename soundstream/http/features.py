"""The feature routes: one sensor (``/v1/sensors/{sensor_id}/features``) or several
(``/v1/features?sensor_id=a&sensor_id=b``), frames or downsampled buckets, as a page
(JSON always; any format with ``limit``) or, for ``ndjson``, ``csv``, ``arrow`` and
``parquet`` without ``limit``, the whole range streamed.

A stream reads the range a page at a time, each page a short query of its own on a
pooled connection, and sends each page before reading the next: memory stays at one
page whatever the range, and a slow client never holds a database connection or a
transaction open (a server-side cursor would, for as long as the client takes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import numpy as np
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from soundstream.config import Settings
from soundstream.core.timefmt import from_micros
from soundstream.http import formats, query, tables
from soundstream.http.cursor import Cursors, Position
from soundstream.http.query import FeatureQuery
from soundstream.store import downsample, read
from soundstream.store.merge import MergedPage, ReadOne, read_merged

# Rows a stream reads and sends at a time.
STREAM_STEP = 5000

MEDIA_TYPES = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; header=present",
    "arrow": tables.ARROW_MEDIA_TYPE,
    "parquet": tables.PARQUET_MEDIA_TYPE,
}


class FeatureRoutes:
    def __init__(self, pool: read.Connections, settings: Settings, cursors: Cursors) -> None:
        self._pool = pool
        self._settings = settings
        self._cursors = cursors
        # CSV and Arrow need fixed widths; the configured sizes are the ones stored
        # frames have unless the settings changed after they were written.
        self._widths = {"mel": settings.n_mels, "mfcc": settings.n_mfcc}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/sensors/{sensor_id}/features", self.one, methods=["GET"]),
            Route("/features", self.many, methods=["GET"]),
        ]

    async def one(self, request: Request) -> Response:
        sensor_id = query.sensor_id(request.path_params["sensor_id"])
        return await self._answer(request, (sensor_id,), one_sensor=True)

    async def many(self, request: Request) -> Response:
        sensors = query.sensor_ids(request.query_params, self._settings.max_sensors)
        return await self._answer(request, sensors, one_sensor=False)

    async def _answer(
        self, request: Request, sensors: tuple[str, ...], *, one_sensor: bool
    ) -> Response:
        settings = self._settings
        q = query.features(
            request.query_params,
            sensors,
            parse_resolution=downsample.parse_resolution,
            max_range_s=settings.max_range_s,
            max_stream_range_s=settings.max_stream_range_s,
        )
        at = self._cursors.decode(q.token, q.scope) if q.token else None
        after = (at.ts_us, at.sensor) if at else None
        if q.limit is None:
            return StreamingResponse(self._stream(q, one_sensor), media_type=MEDIA_TYPES[q.form])
        merged = await self._read(q, q.limit, after)
        following = None
        if merged.page.more and len(merged):
            last = Position(int(merged.page.ts[-1]), int(merged.sensor[-1]))
            following = self._cursors.encode(q.scope, last)
        headers = query.next_page_headers(request, following)
        rows = self._rows(q, merged, one_sensor)
        if q.form == "json":
            only = q.sensors[0] if one_sensor else None
            body = formats.json_page(rows, following, sensor_id=only)
        elif q.form == "ndjson":
            body = formats.ndjson(rows)
        elif q.form == "csv":
            body = formats.csv(rows, self._widths)
        else:
            schema = self._schema(q, one_sensor)
            pieces = tables.arrow_stream if q.form == "arrow" else tables.parquet_stream
            body = b"".join(pieces([self._table(rows, schema)], schema))
        return Response(body, media_type=MEDIA_TYPES[q.form], headers=headers)

    async def _stream(self, q: FeatureQuery, one_sensor: bool) -> AsyncIterator[bytes]:
        """The whole range, a page at a time."""
        schema = self._schema(q, one_sensor)
        after: tuple[int, int] | None = None
        first = True
        if q.form in ("arrow", "parquet"):
            writer = tables.IncrementalWriter(q.form, schema)
            yield writer.start()
        while True:
            merged = await self._read(q, STREAM_STEP, after)
            rows = self._rows(q, merged, one_sensor)
            if q.form == "ndjson":
                yield formats.ndjson(rows)
            elif q.form == "csv":
                yield formats.csv(rows, self._widths, header=first)
            else:
                yield writer.write(self._table(rows, schema))
            first = False
            if not merged.page.more or not len(merged):
                break
            after = (int(merged.page.ts[-1]), int(merged.sensor[-1]))
        if q.form in ("arrow", "parquet"):
            yield writer.finish()

    async def _read(self, q: FeatureQuery, limit: int, after: tuple[int, int] | None) -> MergedPage:
        read_one = self._reader(q, limit)
        if len(q.sensors) == 1:
            since = from_micros(after[0]) if after else None
            page = await read_one(q.sensors[0], since)
            return MergedPage(page, np.zeros(len(page), np.intp))
        return await read_merged(read_one, q.sensors, limit=limit, after=after)

    def _reader(self, q: FeatureQuery, limit: int) -> ReadOne:
        pool, resolution = self._pool, q.resolution_us

        async def frames(sensor_id: str, since: datetime | None) -> read.FeaturePage:
            return await read.features(
                pool, sensor_id, start=q.start, end=q.end, fields=q.fields, limit=limit,
                after_ts=since,
            )  # fmt: skip

        async def buckets(sensor_id: str, since: datetime | None) -> read.FeaturePage:
            assert resolution is not None
            return await downsample.buckets(
                pool, sensor_id, start=q.start, end=q.end, fields=q.fields,
                resolution_us=resolution, agg=q.agg, limit=limit, after_ts=since,
            )  # fmt: skip

        return frames if resolution is None else buckets

    def _rows(self, q: FeatureQuery, merged: MergedPage, one_sensor: bool) -> formats.Rows:
        page = merged.page
        count = page.columns.get(downsample.COUNT) if q.resolution_us else None
        assert count is None or isinstance(count, np.ndarray)
        ids = None
        if not one_sensor:
            encoded = np.array([s.encode() for s in q.sensors], dtype=object)
            ids = list(encoded[merged.sensor])
        return formats.Rows(page, q.fields, sensor_ids=ids, count=count)

    def _schema(self, q: FeatureQuery, one_sensor: bool) -> tables.Schema:
        return tables.schema(
            q.fields,
            self._widths,
            with_sensor_id=not one_sensor,
            with_count=q.resolution_us is not None,
        )

    def _table(self, rows: formats.Rows, schema: tables.Schema) -> tables.Table:
        ids = None if rows.sensor_ids is None else np.asarray(rows.sensor_ids)
        return tables.table(
            rows.page, rows.fields, sensor_ids=ids, widths=self._widths, count=rows.count
        )
