"""The HTTP API (DESIGN.md section 6) as a starlette application.

``create_app`` is handed everything it uses: the settings, the database pool, a
readiness check and the live feed's hub; it opens nothing itself. Health, readiness
and the OpenAPI document are always served; ``/v1/*`` and the live pages
(``/live/...``) only by a process with the ``api`` role.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from soundstream.config import Settings
from soundstream.core.timefmt import format_timestamp
from soundstream.failures import unavailable
from soundstream.http import docs, live, openapi, problems, query
from soundstream.http.auth import BearerAuth
from soundstream.http.cursor import Cursors
from soundstream.http.features import FeatureRoutes
from soundstream.http.limits import ConcurrencyLimit, RateLimit
from soundstream.observe.metrics import CONTENT_TYPE, Metrics
from soundstream.observe.requests import Observed
from soundstream.observe.tracing import Tracing
from soundstream.status import Check, Readiness
from soundstream.store import read

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[Readiness]]
"""The reasons the process is *not* ready (none: ready), and every check's state."""

# Errors a query may raise; ``failures.unavailable`` tells a database that cannot be
# reached right now (503, so clients and load balancers retry) from a bug (500).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_NUMPY)


def create_app(
    settings: Settings,
    *,
    pool: asyncpg.Pool | None,
    ready: ReadinessCheck,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    hub: live.Hub | None = None,
) -> Starlette:
    """The app; without ``metrics`` or ``tracing``, a registry of its own and no traces;
    without ``hub`` (no announcement feed), live streams end after what they replay."""
    metrics = metrics or Metrics()
    tracing = tracing or Tracing("none")
    document = orjson.dumps(openapi.document(settings))

    async def healthz(request: Request) -> Response:
        return ORJSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            readiness = await ready()
        except Exception as exc:
            log.error("readiness_check_failed", exc_info=exc)
            readiness = Readiness([f"readiness check failed: {type(exc).__name__}"], {})
        checks = {name: _check(check) for name, check in readiness.checks.items()}
        if readiness.problems:
            reasons = readiness.problems
            return problems.problem(503, "; ".join(reasons), reasons=reasons, checks=checks)
        return ORJSONResponse({"status": "ready", "checks": checks})

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs.page, methods=["GET"]),
    ]
    if settings.api:
        if pool is None:
            raise ValueError("the api role needs a database pool")
        cursors = Cursors(settings.cursor_secret)
        bounded = read.BoundedPool(pool, settings.pool_timeout_s)
        live_routes = live.LiveRoutes(bounded, settings, hub, metrics)
        v1 = _Sensors(bounded).routes() + FeatureRoutes(bounded, settings, cursors).routes()
        v1 += live_routes.v1_routes()
        routes.append(Mount("/v1", routes=v1, middleware=_guards(settings)))
        # Static pages: public, like /docs; what they show comes from /v1 with a key.
        routes += live_routes.page_routes()
    handlers = dict(problems.HANDLERS)
    handlers.update(dict.fromkeys(DATABASE_ERRORS, _database_error))
    observed = [Middleware(Observed, metrics=metrics, tracing=tracing)]
    return Starlette(routes=routes, exception_handlers=handlers, middleware=observed)


def _guards(settings: Settings) -> list[Middleware]:
    """What stands before ``/v1``, outermost first; nothing else is limited, so
    health, readiness and the API description answer however busy ``/v1`` is.

    Keys first: a request without one costs a SHA-256 and a ready-made 401, and
    takes neither a bucket (so cycling addresses without a key cannot churn the
    bucket table) nor a slot. The rate limit next, keyed on the identity the key
    gives. The bound on requests in flight last, so that only requests about to
    do work hold a slot: a flood of 401s or 429s never turns a client away with 503.
    Live streams are exempt from that bound and counted against their own
    (``live.is_live_stream``).
    """
    guards: list[Middleware] = []
    if settings.api_key_digests:
        guards.append(Middleware(BearerAuth, digests=settings.api_key_digests))
    if settings.rate_limit:
        guards.append(
            Middleware(
                RateLimit,
                rate=settings.rate_limit,
                burst=settings.rate_burst,
                trusted_proxies=settings.trusted_proxies,
            )
        )
    guards.append(
        Middleware(ConcurrencyLimit, limit=settings.max_requests, exempt=live.is_live_stream)
    )
    return guards


class _Sensors:
    """The sensor summary endpoints of ``/v1``."""

    def __init__(self, pool: read.Connections) -> None:
        self._pool = pool

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/sensors", self.sensors, methods=["GET"]),
            Route("/sensors/{sensor_id}", self.sensor, methods=["GET"]),
        ]

    async def sensors(self, request: Request) -> Response:
        """Sensors in id order, a page at a time: ``next`` is the last id of this page
        (ids are not secret), passed back as ``cursor``."""
        params = request.query_params
        limit = query.bounded_int(params, "limit", read.MAX_SENSORS_PAGE, read.MAX_SENSORS_PAGE)
        after = query.one(params, "cursor")
        if after is not None:
            query.sensor_id(after, "cursor")
        sensors = await read.list_sensors(self._pool, after=after, limit=limit + 1)
        following = sensors[limit - 1].sensor_id if len(sensors) > limit else None
        headers = query.next_page_headers(request, following)
        body = {"sensors": [_summary(sensor) for sensor in sensors[:limit]], "next": following}
        return ORJSONResponse(body, headers=headers)

    async def sensor(self, request: Request) -> Response:
        sensor_id = query.sensor_id(request.path_params["sensor_id"])
        status = await read.sensor_status(self._pool, sensor_id)
        if status is None:
            return problems.problem(404, f"no sensor {sensor_id!r} has sent any audio")
        return ORJSONResponse(
            {
                **_summary(status.summary),
                "last_seq": status.last_seq,
                "missing_seq": status.missing_seq,
                "last_received_at": format_timestamp(status.last_received_at),
            }
        )


async def _database_error(request: Request, exc: Exception) -> Response:
    if not unavailable(exc):
        return await problems.server_error(request, exc)  # a bug: logged, 500
    log.warning("database_unavailable", path=request.url.path, error=repr(exc))
    return problems.problem(
        503, "the database is unavailable; try again shortly", headers={"Retry-After": "5"}
    )


# --- rendering ------------------------------------------------------------------
# ``real`` columns reach Python as doubles. Handing them to orjson as float32 prints
# the shortest decimal that reads back as the stored value: 0.1234, not
# 0.12340000271797180.


def _check(check: Check) -> dict[str, str]:
    since = format_timestamp(datetime.fromtimestamp(check.since, UTC))
    shown = {"state": check.state, "since": since}
    return shown | ({"reason": check.reason} if check.reason else {})


def _ts(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def _summary(sensor: read.Sensor) -> dict[str, Any]:
    return {
        "sensor_id": sensor.sensor_id,
        "first_ts": _ts(sensor.first_ts),
        "last_ts": _ts(sensor.last_ts),
        "chunks": sensor.chunks,
        "frames": sensor.frames,
    }
