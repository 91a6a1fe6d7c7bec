"""The read API a user would write: the baseline of ``bench/readapi.py``.

    .venv/bin/python bench/bare_readapi.py --database postgresql://postgres@127.0.0.1:5432/DB
                                           [--host 127.0.0.1] [--port 8081] [--pool-size 4]

One uvicorn process (no workers, uvicorn's defaults otherwise), a bare starlette app,
an asyncpg pool and orjson or pyarrow, on ``bare_frames``: one row per frame, every
feature a column (``mel`` and ``mfcc`` as ``real[]``), primary key ``(sensor_id, ts)``
(``bench/readapi.py`` makes it). Three routes, times in RFC 3339:

- ``GET /features?sensor_id=&start=&end=``: ``bench/bare.py``'s query, ``SELECT ts,
  rms, zcr, centroid ... ORDER BY ts LIMIT 1000``, each record a dict, orjson;
- ``GET /buckets?sensor_id=&start=&end=&limit=``: 1 s buckets,

      SELECT date_bin('1 second', ts, 'epoch') AS bucket, avg(rms) AS rms,
             avg(zcr) AS zcr, avg(centroid) AS centroid, count(*) AS count
      FROM bare_frames WHERE sensor_id = $1 AND ts >= $2 AND ts < $3
      GROUP BY bucket ORDER BY bucket LIMIT $4

  with ``$3`` the earlier of ``end`` and ``start + limit`` seconds (a page of
  ``limit`` buckets needs no frame past that, and without it every page would
  aggregate the rest of the range), each record a dict, orjson;
- ``GET /parquet?sensor_id=&start=&end=``: every feature column of the range ``ORDER
  BY ts``, turned column by column into a pyarrow table (``ts`` timestamp[us, UTC],
  scalars float32, ``mel``/``mfcc`` lists of float32) and written as one Parquet file
  with zstd.

PostgreSQL's settings are left as they are (JIT and parallel query included). No
validation beyond what parsing needs: a bad parameter is a 400 with a one-line text
body.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from bare import QUERY as FRAMES_QUERY
from bare import pooled, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

BUCKETS_QUERY = """
SELECT date_bin('1 second', ts, 'epoch') AS bucket, avg(rms) AS rms, avg(zcr) AS zcr,
       avg(centroid) AS centroid, count(*) AS count
FROM bare_frames
WHERE sensor_id = $1 AND ts >= $2 AND ts < $3
GROUP BY bucket ORDER BY bucket LIMIT $4
"""

EXPORT_QUERY = """
SELECT ts, rms, zcr, centroid, bandwidth, rolloff, flatness, dominant_hz, mel, mfcc
FROM bare_frames
WHERE sensor_id = $1 AND ts >= $2 AND ts < $3
ORDER BY ts
"""

FLOAT = pa.float32()
EXPORT_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        *((name, FLOAT) for name in ("rms", "zcr", "centroid", "bandwidth", "rolloff")),
        *((name, FLOAT) for name in ("flatness", "dominant_hz")),
        ("mel", pa.list_(FLOAT)),
        ("mfcc", pa.list_(FLOAT)),
    ]
)
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
MAX_BUCKETS = 10_000


class BadParameter(ValueError):
    pass


def window(request: Request) -> tuple[str, datetime, datetime]:
    query = request.query_params
    try:
        return (
            query["sensor_id"],
            datetime.fromisoformat(query["start"]),
            datetime.fromisoformat(query["end"]),
        )
    except (KeyError, ValueError) as exc:
        raise BadParameter(str(exc)) from exc


def bad(exc: Exception) -> Response:
    return PlainTextResponse(f"bad request: {exc}", status_code=400)


def parquet_bytes(rows: list[asyncpg.Record]) -> bytes:
    columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True))
    if not rows:
        columns = [() for _ in EXPORT_SCHEMA]
    arrays = [pa.array(values, f.type) for values, f in zip(columns, EXPORT_SCHEMA, strict=True)]
    table = pa.Table.from_arrays(arrays, schema=EXPORT_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def create_app(database: str, pool_size: int) -> Starlette:
    pools, lifespan = pooled(database, pool_size)

    async def features(request: Request) -> Response:
        try:
            sensor_id, start, end = window(request)
        except BadParameter as exc:
            return bad(exc)
        rows = await pools[0].fetch(FRAMES_QUERY, sensor_id, start, end)
        body = orjson.dumps({"frames": [dict(row) for row in rows]})
        return Response(body, media_type="application/json")

    async def buckets(request: Request) -> Response:
        try:
            sensor_id, start, end = window(request)
            limit = int(request.query_params.get("limit", MAX_BUCKETS))
            if not 1 <= limit <= MAX_BUCKETS:
                raise BadParameter(f"limit must be 1..{MAX_BUCKETS}")
        except (BadParameter, ValueError) as exc:
            return bad(exc)
        high = min(end, start + timedelta(seconds=limit))
        rows = await pools[0].fetch(BUCKETS_QUERY, sensor_id, start, high, limit)
        body = orjson.dumps({"buckets": [dict(row) for row in rows]})
        return Response(body, media_type="application/json")

    async def parquet(request: Request) -> Response:
        try:
            sensor_id, start, end = window(request)
        except BadParameter as exc:
            return bad(exc)
        rows = await pools[0].fetch(EXPORT_QUERY, sensor_id, start, end)
        return Response(parquet_bytes(rows), media_type=PARQUET_MEDIA_TYPE)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/features", features, methods=["GET"]),
            Route("/buckets", buckets, methods=["GET"]),
            Route("/parquet", parquet, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    serve(create_app, __doc__)


if __name__ == "__main__":
    main()
