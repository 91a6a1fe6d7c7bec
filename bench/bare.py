"""The read path a user would write: the baseline of ``bench/readpath.py``.

    .venv/bin/python bench/bare.py --database postgresql://postgres@127.0.0.1:5432/DB
                                   [--host 127.0.0.1] [--port 8081] [--pool-size 4]

One uvicorn process (no workers, uvicorn's defaults otherwise: the same event loop and
HTTP implementation ``soundstream serve`` gets), a bare starlette app, an asyncpg pool
and orjson. One route, ``GET /features?sensor_id=&start=&end=`` (RFC 3339 times), runs

    SELECT ts, rms, zcr, centroid FROM bare_frames
    WHERE sensor_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT 1000

and answers ``{"frames": [{"ts": "<ISO 8601>", "rms": ..., "zcr": ..., "centroid": ...},
...]}``: each record becomes a dict, and orjson writes the datetimes and floats as they
come. ``bare_frames`` is a plain per-frame table with primary key ``(sensor_id, ts)``
(``bench/readpath.py`` makes it). No validation beyond what parsing needs: a bad
parameter is a 400 with a one-line text body.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import asyncpg
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

QUERY = """
SELECT ts, rms, zcr, centroid FROM bare_frames
WHERE sensor_id = $1 AND ts >= $2 AND ts < $3
ORDER BY ts LIMIT 1000
"""


Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def pooled(database: str, pool_size: int) -> tuple[list[asyncpg.Pool], Lifespan]:
    """A lifespan that opens one asyncpg pool, and the list it puts the pool in."""
    pools: list[asyncpg.Pool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database, min_size=pool_size, max_size=pool_size)
        pools.append(pool)
        try:
            yield
        finally:
            await pool.close()

    return pools, lifespan


def create_app(database: str, pool_size: int) -> Starlette:
    pools, lifespan = pooled(database, pool_size)

    async def features(request: Request) -> Response:
        query = request.query_params
        try:
            sensor_id = query["sensor_id"]
            start = datetime.fromisoformat(query["start"])
            end = datetime.fromisoformat(query["end"])
        except (KeyError, ValueError) as exc:
            return PlainTextResponse(f"bad request: {exc}", status_code=400)
        rows = await pools[0].fetch(QUERY, sensor_id, start, end)
        body = orjson.dumps({"frames": [dict(row) for row in rows]})
        return Response(body, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/features", features, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def serve(create: Callable[[str, int], Starlette], doc: str | None) -> None:
    """Parse the bare server's options and serve ``create(database, pool_size)``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--database", required=True, help="PostgreSQL URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--pool-size", type=int, default=4, help="asyncpg pool connections")
    args = parser.parse_args()
    app = create(args.database, args.pool_size)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def main() -> None:
    serve(create_app, __doc__)


if __name__ == "__main__":
    main()
