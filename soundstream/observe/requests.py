"""Every HTTP request measured, traced and logged once, by route template.

Plain ASGI middleware around the whole app: starlette records the route it matched
in the scope as it routes, so after the answer the template (``/v1/sensors/
{sensor_id}/features``) is known; paths never become labels. One canonical line per
request at info: method, route, status, ms, and the id of the API key (never the
key, never a header).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soundstream.http.auth import CLIENT
from soundstream.observe.metrics import Metrics
from soundstream.observe.tracing import Tracing

log = structlog.get_logger("soundstream.http")

# Methods are the client's to choose: any other becomes "other" in labels.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"
# Probes and scrapes come every few seconds from the platform: logged at debug.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def route_template(scope: Scope) -> str:
    """The template of the route starlette matched (a mount's requests that no
    route of it took: ``<mount>/{path}``), or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if isinstance(route, Mount):
        return str(scope.get("root_path", "")) + "/{path}"
    return str(scope.get("root_path", "")) + path


class Observed:
    def __init__(self, app: ASGIApp, metrics: Metrics, tracing: Tracing) -> None:
        self.app = app
        self._metrics = metrics
        self._tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "other"
        status = 500  # unless an answer starts
        span = None
        if self._tracing.enabled:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            span = self._tracing.request(headers, method)
        request_id = secrets.token_hex(8)
        bound: dict[str, Any] = {"request_id": request_id}
        if span is not None:
            bound["trace_id"] = format(span.get_span_context().trace_id, "032x")

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with structlog.contextvars.bound_contextvars(**bound):
            try:
                await self.app(scope, receive, sending)
            finally:
                seconds = time.perf_counter() - started
                route = route_template(scope)
                self._metrics.http_requests.labels(method, route, str(status)).inc()
                self._metrics.http_request_seconds.labels(method, route).observe(seconds)
                line = log.debug if route in QUIET_ROUTES and status < 400 else log.info
                line(
                    "http_request",
                    method=method,
                    route=route,
                    status=status,
                    ms=round(seconds * 1000, 1),
                    key_id=scope.get(CLIENT),
                )
                if span is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    self._tracing.finish(span, f"HTTP {status}" if status >= 500 else None)
