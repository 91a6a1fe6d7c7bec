"""RFC 9457 problem details: every HTTP error this service answers, in one shape.

``{"type": "about:blank", "title": <status phrase>, "status", "detail"}`` plus
``parameter`` when one request parameter is to blame, and any other extension
members a caller adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from soundstream.errors import BadRequest

log = structlog.get_logger(__name__)

MEDIA_TYPE = "application/problem+json"


class ProblemResponse(Response):
    media_type = MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(
    status: int,
    detail: str,
    *,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if parameter is not None:
        body["parameter"] = parameter
    body.update(extensions)
    return ProblemResponse(body, status_code=status, headers=headers)


async def bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return problem(exc.status, exc.detail, parameter=exc.parameter)


async def http_error(request: Request, exc: Exception) -> Response:
    """Routing's own errors (404, 405 with its Allow header, ...) as problems."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route for {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed here"
    return problem(exc.status_code, detail, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after answering so the server logs it too; this line adds
    # the request it belongs to. No input is meant to get here: each one that does
    # is a bug to fix.
    log.error("request_failed", method=request.method, path=request.url.path, exc_info=exc)
    return problem(500, "an unexpected error occurred; it has been logged")


HANDLERS: Mapping[Any, ExceptionHandler] = {
    BadRequest: bad_request,
    HTTPException: http_error,
    Exception: server_error,
}
