"""The HTTP API (DESIGN.md section 6) as a starlette application.

``create_app`` is handed everything it uses: the settings, the database pool and a
readiness check; it opens nothing itself. Health, readiness and the OpenAPI
document are always served; ``/v1/*`` only by a process with the ``api`` role.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson
import structlog
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from soundstream.config import Settings
from soundstream.core.fields import FEATURE_FIELDS
from soundstream.core.timefmt import format_timestamp, from_micros, parse_timestamp
from soundstream.core.wire import valid_sensor_id
from soundstream.errors import BadRequest
from soundstream.failures import unavailable
from soundstream.http import cursor, formats, openapi, problems
from soundstream.store import read

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[list[str]]]
"""Returns the reasons the process is *not* ready; an empty list means ready."""

FORMATS = ("json", "ndjson", "csv")
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
    settings: Settings, *, pool: asyncpg.Pool | None, ready: ReadinessCheck
) -> Starlette:
    document = orjson.dumps(openapi.document(api=settings.api, auth=bool(settings.api_keys)))

    async def healthz(request: Request) -> Response:
        return ORJSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            reasons = await ready()
        except Exception as exc:
            log.error("readiness_check_failed", exc_info=exc)
            reasons = [f"readiness check failed: {type(exc).__name__}"]
        if reasons:
            return problems.problem(503, "; ".join(reasons), reasons=reasons)
        return ORJSONResponse({"status": "ready"})

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type="application/json")

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    if settings.api:
        if pool is None:
            raise ValueError("the api role needs a database pool")
        auth = [Middleware(BearerAuth, keys=settings.api_keys)] if settings.api_keys else []
        routes.append(Mount("/v1", routes=_Sensors(pool, settings).routes(), middleware=auth))
    handlers = dict(problems.HANDLERS)
    handlers.update(dict.fromkeys(DATABASE_ERRORS, _database_error))
    return Starlette(routes=routes, exception_handlers=handlers)


class _Sensors:
    """The ``/v1`` endpoints."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        # CSV needs a fixed set of columns; the configured sizes are the ones
        # stored frames have unless the settings changed after they were written.
        self._widths = {"mel": settings.n_mels, "mfcc": settings.n_mfcc}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/sensors", self.sensors, methods=["GET"]),
            Route("/sensors/{sensor_id}", self.sensor, methods=["GET"]),
            Route("/sensors/{sensor_id}/features", self.features, methods=["GET"]),
        ]

    async def sensors(self, request: Request) -> Response:
        sensors = await read.list_sensors(self._pool)
        return ORJSONResponse({"sensors": [_summary(sensor) for sensor in sensors]})

    async def sensor(self, request: Request) -> Response:
        sensor_id = _sensor_id(request)
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

    async def features(self, request: Request) -> Response:
        sensor_id = _sensor_id(request)
        query = request.query_params
        start = _timestamp(query, "start")
        end = _timestamp(query, "end")
        if end <= start:
            raise BadRequest("end", "end must be later than start")
        fields = _fields(query)
        limit = _limit(query)
        form = _one(query, "format") or "json"
        if form not in FORMATS:
            raise BadRequest("format", f"format must be one of {', '.join(FORMATS)}")
        token = _one(query, "cursor")
        after = cursor.decode(token, sensor_id, start, end) if token else None

        page = await read.features(
            self._pool, sensor_id, start=start, end=end, fields=fields, limit=limit, after_ts=after
        )
        last = from_micros(int(page.ts[-1])) if len(page) else None
        following = cursor.encode(sensor_id, start, end, last) if page.more and last else None
        headers = _next_page_headers(request, following)
        if form == "json":
            body = formats.json_page(page, fields, sensor_id, following)
            return Response(body, media_type="application/json", headers=headers)
        if form == "ndjson":
            lines = formats.ndjson(page, fields)
            return Response(lines, media_type="application/x-ndjson", headers=headers)
        table = formats.csv(page, fields, self._widths)
        return Response(table, media_type="text/csv; header=present", headers=headers)


class BearerAuth:
    """Plain ASGI middleware: ``Authorization: Bearer <key>`` for one of ``keys``."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self._keys = tuple(key.encode() for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = problems.problem(
            401,
            "send Authorization: Bearer <key> with a valid API key",
            headers={"WWW-Authenticate": 'Bearer realm="soundstream"'},
        )
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        value = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = bytes(value).strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        # Compare with every key, without stopping early, so timing reveals nothing.
        matches = [hmac.compare_digest(token, key) for key in self._keys]
        return any(matches)


async def _database_error(request: Request, exc: Exception) -> Response:
    if not unavailable(exc):
        return await problems.server_error(request, exc)  # a bug: logged, 500
    log.warning("database_unavailable", path=request.url.path, error=repr(exc))
    return problems.problem(
        503, "the database is unavailable; try again shortly", headers={"Retry-After": "5"}
    )


# --- request parameters ---------------------------------------------------------


def _sensor_id(request: Request) -> str:
    sensor_id: str = request.path_params["sensor_id"]
    if not valid_sensor_id(sensor_id):
        raise BadRequest("sensor_id", "sensor_id must match [A-Za-z0-9._-]{1,64}")
    return sensor_id


def _one(query: QueryParams, name: str) -> str | None:
    values = query.getlist(name)
    if len(values) > 1:
        raise BadRequest(name, f"{name} must be given at most once")
    return values[0] if values else None


def _timestamp(query: QueryParams, name: str) -> datetime:
    text = _one(query, name)
    if not text:
        raise BadRequest(name, f"{name} is required (an RFC 3339 date-time)")
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise BadRequest(name, f"{name} {exc}; got {text!r:.60}") from None


def _fields(query: QueryParams) -> list[str]:
    """Requested feature columns in their canonical order; all of them when none is named.

    Every ``fields=`` given counts; blanks and repeats are ignored, and ``ts`` may be
    named (``fields=ts`` asks for timestamps alone) although it always comes.
    """
    named = {part.strip() for value in query.getlist("fields") for part in value.split(",")}
    named.discard("")
    if not named:
        return list(FEATURE_FIELDS)
    unknown = named.difference(("ts", *FEATURE_FIELDS))
    if unknown:
        listed = ", ".join(sorted(repr(name)[:40] for name in unknown)[:5])
        known = ", ".join(FEATURE_FIELDS)
        raise BadRequest("fields", f"fields has unknown names {listed}; known: ts, {known}")
    return [name for name in FEATURE_FIELDS if name in named]


def _limit(query: QueryParams) -> int:
    text = _one(query, "limit")
    if text is None or text == "":
        return read.DEFAULT_LIMIT
    # Plain ASCII digits only: int() would also take "+5", "1_000" and other scripts.
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not (
        1 <= int(text) <= read.MAX_LIMIT
    ):
        raise BadRequest(
            "limit", f"limit must be an integer from 1 to {read.MAX_LIMIT}; got {text!r:.20}"
        )
    return int(text)


def _next_page_headers(request: Request, token: str | None) -> dict[str, str]:
    if token is None:
        return {}
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    params.append(("cursor", token))
    # A relative reference: right behind any proxy, whatever host the client used.
    target = f"{request.url.path}?{urlencode(params)}"
    return {"Link": f'<{target}>; rel="next"', "X-Next-Cursor": token}


# --- rendering ------------------------------------------------------------------
# ``real`` columns reach Python as doubles. Handing them to orjson as float32 prints
# the shortest decimal that reads back as the stored value: 0.1234, not
# 0.12340000271797180.


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
