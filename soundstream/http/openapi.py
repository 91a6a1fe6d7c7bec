"""The OpenAPI 3.1 description of the HTTP API, as served at ``/openapi.json``.

Built per process so that it describes what that process serves: the ``/v1``
paths only with the ``api`` role, the bearer scheme only when API keys are set.
"""

from __future__ import annotations

from typing import Any

from soundstream.core.fields import ARRAY_FIELDS, FEATURE_FIELDS, SCALARS
from soundstream.store.read import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_MISSING_RANGES,
)

_PROBLEM = "application/problem+json"
_TIMESTAMP_EXAMPLE = "2026-01-01T00:00:00.032000Z"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref("schemas", "Problem"), _PROBLEM)}


_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference", "const": "about:blank"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "parameter": {
                "type": "string",
                "description": "The request parameter at fault, when there is one.",
            },
            "reasons": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Why the process is not ready (readiness only).",
            },
        },
    },
    "Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, always UTC with six fractional digits.",
        "examples": [_TIMESTAMP_EXAMPLE],
    },
    "SensorSummary": {
        "type": "object",
        "required": ["sensor_id", "first_ts", "last_ts", "chunks", "frames"],
        "properties": {
            "sensor_id": {"type": "string"},
            "first_ts": {
                "oneOf": [_ref("schemas", "Timestamp"), {"type": "null"}],
                "description": "Time of the first frame; null until one exists.",
            },
            "last_ts": {
                "oneOf": [_ref("schemas", "Timestamp"), {"type": "null"}],
                "description": "Time of the last frame; null until one exists.",
            },
            "chunks": {"type": "integer", "minimum": 0},
            "frames": {"type": "integer", "minimum": 0},
        },
    },
    "SensorList": {
        "type": "object",
        "required": ["sensors"],
        "properties": {
            "sensors": {"type": "array", "items": _ref("schemas", "SensorSummary")},
        },
    },
    "SensorStatus": {
        "allOf": [
            _ref("schemas", "SensorSummary"),
            {
                "type": "object",
                "required": ["last_seq", "missing_seq", "last_received_at"],
                "properties": {
                    "last_seq": {"type": "integer", "minimum": 0},
                    "missing_seq": {
                        "type": "array",
                        "maxItems": MAX_MISSING_RANGES,
                        "description": (
                            "Inclusive [from, to] ranges of seq below last_seq with no "
                            f"chunk received; the lowest {MAX_MISSING_RANGES} ranges at most."
                        ),
                        "items": {
                            "type": "array",
                            "prefixItems": [
                                {"type": "integer", "minimum": 0},
                                {"type": "integer", "minimum": 0},
                            ],
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "last_received_at": _ref("schemas", "Timestamp"),
                },
            },
        ]
    },
    "Frame": {
        "type": "object",
        "description": "One frame: ts and the requested fields.",
        "required": ["ts"],
        "properties": {
            "ts": _ref("schemas", "Timestamp"),
            **{name: {"type": "number"} for name in SCALARS},
            **{name: {"type": "array", "items": {"type": "number"}} for name in ARRAY_FIELDS},
        },
    },
    "FeaturePage": {
        "type": "object",
        "required": ["sensor_id", "frames", "next"],
        "properties": {
            "sensor_id": {"type": "string"},
            "frames": {"type": "array", "items": _ref("schemas", "Frame")},
            "next": {
                "type": ["string", "null"],
                "description": "Pass as cursor= for the following page; null on the last.",
            },
        },
    },
}

_PARAMETERS: dict[str, Any] = {
    "sensor_id": {
        "name": "sensor_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    },
    "start": {
        "name": "start",
        "in": "query",
        "required": True,
        "description": "Inclusive lower bound, RFC 3339 with a time zone.",
        "schema": {"type": "string", "format": "date-time"},
    },
    "end": {
        "name": "end",
        "in": "query",
        "required": True,
        "description": "Exclusive upper bound, RFC 3339 with a time zone; later than start.",
        "schema": {"type": "string", "format": "date-time"},
    },
    "fields": {
        "name": "fields",
        "in": "query",
        "description": "Comma-separated feature names; ts always comes. Default: all.",
        "style": "form",
        "explode": False,
        "schema": {
            "type": "array",
            "uniqueItems": True,
            "items": {"type": "string", "enum": ["ts", *FEATURE_FIELDS]},
        },
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "description": "Frames per page.",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_LIMIT,
            "default": DEFAULT_LIMIT,
        },
    },
    "cursor": {
        "name": "cursor",
        "in": "query",
        "description": "The next value of the previous page; same sensor, start and end.",
        "schema": {"type": "string", "maxLength": 512, "pattern": "^[A-Za-z0-9_-]*$"},
    },
    "format": {
        "name": "format",
        "in": "query",
        "schema": {"type": "string", "enum": ["json", "ndjson", "csv"], "default": "json"},
    },
}

_NEXT_PAGE_HEADERS = {
    "Link": {
        "description": 'rel="next": this request with cursor= for the following page.',
        "schema": {"type": "string"},
    },
    "X-Next-Cursor": {
        "description": "The cursor of the following page, when there is one.",
        "schema": {"type": "string"},
    },
}


def _operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    *,
    parameters: tuple[str, ...] = (),
    errors: dict[str, str] | None = None,
    auth: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    for status, description in (errors or {}).items():
        responses[status] = _problem(description)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    if auth:
        operation["security"] = [{"bearer": []}]
        responses["401"] = _problem("Missing or wrong API key.")
    return operation


def _v1_paths(auth: bool) -> dict[str, Any]:
    unavailable = {"503": "The database is unavailable."}
    return {
        "/v1/sensors": {
            "get": _operation(
                "listSensors",
                "Every sensor that has sent audio, with its summary.",
                {"description": "The sensors.", "content": _json(_ref("schemas", "SensorList"))},
                errors=unavailable,
                auth=auth,
            )
        },
        "/v1/sensors/{sensor_id}": {
            "get": _operation(
                "getSensor",
                "One sensor's summary, last seq and the seqs never received.",
                {"description": "The sensor.", "content": _json(_ref("schemas", "SensorStatus"))},
                parameters=("sensor_id",),
                errors={"400": "Bad sensor_id.", "404": "Unknown sensor.", **unavailable},
                auth=auth,
            )
        },
        "/v1/sensors/{sensor_id}/features": {
            "get": _operation(
                "getFeatures",
                "Frames with start <= ts < end, ascending by ts, one page at a time.",
                {
                    "description": "One page of frames (empty for an unknown sensor).",
                    "headers": _NEXT_PAGE_HEADERS,
                    "content": {
                        **_json(_ref("schemas", "FeaturePage")),
                        **_json(_ref("schemas", "Frame"), "application/x-ndjson"),
                        **_json(
                            {
                                "type": "string",
                                "description": (
                                    "Header ts, the scalar fields, then mel_0.., mfcc_0.."
                                ),
                            },
                            "text/csv",
                        ),
                    },
                },
                parameters=("sensor_id", "start", "end", "fields", "limit", "cursor", "format"),
                errors={"400": "A bad parameter, named in the problem.", **unavailable},
                auth=auth,
            )
        },
    }


def _service_paths() -> dict[str, Any]:
    status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    return {
        "/healthz": {
            "get": _operation(
                "health", "Liveness.", {"description": "Alive.", "content": _json(status)}
            )
        },
        "/readyz": {
            "get": _operation(
                "ready",
                "Readiness: every enabled role is up and its dependencies reachable.",
                {"description": "Ready.", "content": _json(status)},
                errors={"503": "Not ready; the problem lists the reasons."},
            )
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document.",
                {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})},
            )
        },
    }


def document(*, api: bool, auth: bool) -> dict[str, Any]:
    """The document for a process with (``api``) or without the ``/v1`` routes."""
    components: dict[str, Any] = {"schemas": _SCHEMAS, "parameters": _PARAMETERS}
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
        }
    paths = _service_paths()
    if api:
        paths.update(_v1_paths(auth))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "soundstream",
            "version": "1",
            "description": "Spectral features of sensor audio, per sensor and time range.",
        },
        "paths": paths,
        "components": components,
    }
