"""The OpenAPI 3.1 description of the HTTP API, as served at ``/openapi.json``.

Built per process from its settings, so that it describes what that process
serves: the ``/v1`` paths only with the ``api`` role, the bearer scheme only when
API keys are set, and the limits (sensors per request, range spans, the rate limit)
it enforces. Every name, enum and bound comes from the constants the code checks
requests against.
"""

from __future__ import annotations

from typing import Any

from soundstream.config import Settings
from soundstream.core.fields import ARRAY_FIELDS, FEATURE_FIELDS, SCALARS
from soundstream.core.wire import SENSOR_ID
from soundstream.http import cursor, features, live, problems, query
from soundstream.observe import metrics
from soundstream.store import downsample
from soundstream.store.read import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_MISSING_RANGES,
    MAX_SENSORS_PAGE,
)

JSON = "application/json"
HTML = "text/html"
# The media type of each format, without parameters (CSV's header=present).
MEDIA_TYPES = {form: value.split(";")[0] for form, value in features.MEDIA_TYPES.items()}

_TIMESTAMP_EXAMPLE = "2026-01-01T00:00:00.032000Z"
_SENSOR_PATTERN = f"^{SENSOR_ID.pattern}$"
# What ``cursor.Cursors`` issues: base64url without padding.
_CURSOR_PATTERN = "^[A-Za-z0-9_-]*$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _content(schema: dict[str, Any], media_type: str = JSON) -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def _resolution(micros: int) -> str:
    """``100_000`` -> ``"100ms"``: as the resolution parameter writes it."""
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000)):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    return f"{micros // 1000}ms"


def _duration(seconds: float) -> str:
    """``86400.0`` -> ``"1 d"``: the largest unit that divides the span."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


# --- schemas ----------------------------------------------------------------------


def _row(*, sensor: bool, bucket: bool) -> dict[str, Any]:
    """One row of a feature answer: a frame or a downsampled bucket, with the sensor
    it belongs to in several-sensor answers. Keys come in this order."""
    properties: dict[str, Any] = {}
    required = ["ts"]
    if sensor:
        properties["sensor_id"] = _ref("schemas", "SensorId")
        required.insert(0, "sensor_id")
    if bucket:
        properties["ts"] = {
            "allOf": [_ref("schemas", "Timestamp")],
            "description": "The bucket's start: a whole multiple of resolution since the epoch.",
        }
        properties["count"] = {
            "type": "integer",
            "minimum": 1,
            "description": "Frames in the bucket (buckets without frames are left out).",
        }
        required.append("count")
    else:
        properties["ts"] = _ref("schemas", "Timestamp")
    for name in SCALARS:
        properties[name] = {"type": "number"}
    if not bucket:
        for name in ARRAY_FIELDS:
            properties[name] = {
                "type": "array",
                "items": {"type": "number"},
                "description": "As stored: as many values as the frame was computed with.",
            }
    what = "A bucket: ts, count and the aggregate" if bucket else "A frame: ts and the value"
    return {
        "type": "object",
        "description": f"{what} of each field asked for"
        + (", after the sensor it belongs to." if sensor else "."),
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def _page(row: str, *, one_sensor: bool) -> dict[str, Any]:
    """A JSON page: the sensor asked for (one-sensor answers), the rows, the cursor."""
    properties: dict[str, Any] = {}
    if one_sensor:
        properties["sensor_id"] = _ref("schemas", "SensorId")
    properties["frames"] = {
        "type": "array",
        "items": _ref("schemas", row),
        "description": "Ascending by ts" + ("." if one_sensor else ", then by sensor_id."),
    }
    properties["next"] = {
        "type": ["string", "null"],
        "pattern": _CURSOR_PATTERN,
        "description": "Pass as cursor= for the following page; null on the last.",
    }
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def _schemas() -> dict[str, Any]:
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details: every error this API answers.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string", "format": "uri-reference", "const": "about:blank"},
                "title": {"type": "string", "description": "The status code's phrase."},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string", "description": "What was wrong, for a person."},
                "parameter": {
                    "type": "string",
                    "description": "The request parameter at fault, when there is one.",
                },
                "reasons": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Why the process is not ready (readiness only).",
                },
                "checks": {
                    "$ref": "#/components/schemas/Checks",
                    "description": "Every actor and dependency (readiness only).",
                },
            },
        },
        "Checks": {
            "type": "object",
            "description": "Each actor and dependency of the process (broker, extractor, "
            "database, process) with its state and since when.",
            "additionalProperties": {
                "type": "object",
                "required": ["state", "since"],
                "properties": {
                    "state": {"type": "string", "enum": ["up", "starting", "down"]},
                    "since": {"$ref": "#/components/schemas/Timestamp"},
                    "reason": {"type": "string", "description": "Why not up."},
                },
            },
        },
        "SensorId": {"type": "string", "pattern": _SENSOR_PATTERN, "examples": ["mic-1"]},
        "Timestamp": {
            "type": "string",
            "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{6}Z$",
            "description": "RFC 3339, always UTC with six fractional digits.",
            "examples": [_TIMESTAMP_EXAMPLE],
        },
        "SensorSummary": {
            "type": "object",
            "required": ["sensor_id", "first_ts", "last_ts", "chunks", "frames"],
            "properties": {
                "sensor_id": _ref("schemas", "SensorId"),
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
            "required": ["sensors", "next"],
            "properties": {
                "sensors": {
                    "type": "array",
                    "items": _ref("schemas", "SensorSummary"),
                    "description": "In sensor_id order.",
                },
                "next": {
                    "oneOf": [_ref("schemas", "SensorId"), {"type": "null"}],
                    "description": "Pass as cursor= for the following page; null on the last.",
                },
            },
            "additionalProperties": False,
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
        "Frame": _row(sensor=False, bucket=False),
        "Bucket": _row(sensor=False, bucket=True),
        "SensorFrame": _row(sensor=True, bucket=False),
        "SensorBucket": _row(sensor=True, bucket=True),
        "LiveEvent": {
            "type": "object",
            "description": "One Server-Sent Event (WHATWG HTML, 9.2) of a live stream: its "
            "fields; data is JSON.",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": ["chunk", "missed", "close"]},
                "id": {
                    "type": "string",
                    "pattern": "^[0-9]+(;[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)?$",
                    "description": "The highest seq sent, then (after ;) the seqs below it "
                    "not sent yet, as ranges: send it back as Last-Event-ID.",
                },
                "retry": {"type": "integer", "minimum": 0},
                "data": {
                    "type": "string",
                    "contentMediaType": JSON,
                    "contentSchema": {
                        "oneOf": [
                            _ref("schemas", "LiveChunk"),
                            _ref("schemas", "LiveMissed"),
                            _ref("schemas", "LiveClose"),
                        ]
                    },
                },
            },
        },
        "LiveChunk": {
            "type": "object",
            "description": "event: chunk. One committed chunk's frames.",
            "required": ["sensor_id", "seq", "frames"],
            "properties": {
                "sensor_id": _ref("schemas", "SensorId"),
                "seq": {"type": "integer", "minimum": 0},
                "frames": {"type": "array", "items": _ref("schemas", "Frame")},
            },
            "additionalProperties": False,
        },
        "LiveMissed": {
            "type": "object",
            "description": "event: missed. Seqs from..to (inclusive) skipped on resuming, "
            "being beyond the window.",
            "required": ["from", "to", "reason"],
            "properties": {
                "from": {"type": "integer", "minimum": 0},
                "to": {"type": "integer", "minimum": 0},
                "reason": {"const": "beyond-window"},
            },
            "additionalProperties": False,
        },
        "LiveClose": {
            "type": "object",
            "description": "event: close. The server ends the stream, and why.",
            "required": ["reason", "detail"],
            "properties": {
                "reason": {
                    "type": "string",
                    "enum": ["behind", "shutdown", "unavailable", "no-feed"],
                },
                "detail": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "FramePage": _page("Frame", one_sensor=True),
        "BucketPage": _page("Bucket", one_sensor=True),
        "SensorFramePage": _page("SensorFrame", one_sensor=False),
        "SensorBucketPage": _page("SensorBucket", one_sensor=False),
    }


# --- parameters -------------------------------------------------------------------


def _parameters(settings: Settings) -> dict[str, Any]:
    page_span = _duration(settings.max_range_s)
    stream_span = _duration(settings.max_stream_range_s)
    return {
        "sensor_id": {
            "name": "sensor_id",
            "in": "path",
            "required": True,
            "schema": _ref("schemas", "SensorId"),
        },
        "sensors_limit": {
            "name": "limit",
            "in": "query",
            "description": "Sensors per page.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_SENSORS_PAGE,
                "default": MAX_SENSORS_PAGE,
            },
        },
        "sensors_cursor": {
            "name": "cursor",
            "in": "query",
            "description": (
                "The next of the previous page (also sent as X-Next-Cursor and in Link): "
                "the page starts after this sensor_id."
            ),
            "schema": _ref("schemas", "SensorId"),
        },
        "sensor_ids": {
            "name": "sensor_id",
            "in": "query",
            "required": True,
            "description": (
                "The sensors, one sensor_id= each (a comma-separated list counts too; "
                f"repeats count once); at most {settings.max_sensors}."
            ),
            "style": "form",
            "explode": True,
            "schema": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.max_sensors,
                "items": _ref("schemas", "SensorId"),
            },
            "example": ["mic-1", "mic-2"],
        },
        "start": {
            "name": "start",
            "in": "query",
            "required": True,
            "description": (
                "Inclusive lower bound: an RFC 3339 date-time with a time zone (Z or an "
                "offset), up to nine fractional digits, no leap second."
            ),
            "schema": {"type": "string", "format": "date-time"},
            "example": "2026-01-01T00:00:00Z",
        },
        "end": {
            "name": "end",
            "in": "query",
            "required": True,
            "description": (
                "Exclusive upper bound, as start, and later than it. end - start may span "
                f"at most {page_span} for a page and {stream_span} for a streamed answer."
            ),
            "schema": {"type": "string", "format": "date-time"},
            "example": "2026-01-01T00:01:00Z",
        },
        "fields": {
            "name": "fields",
            "in": "query",
            "description": (
                "Comma-separated feature names (the parameter may also be repeated); blanks "
                "and repeats are ignored and ts always comes, so fields=ts asks for times "
                "alone. Default: every field, or every scalar field when downsampled. "
                f"{', '.join(ARRAY_FIELDS)} cannot be downsampled."
            ),
            "style": "form",
            "explode": False,
            "schema": {
                "type": "array",
                "items": {"type": "string", "enum": ["ts", *FEATURE_FIELDS]},
            },
        },
        "limit": {
            "name": "limit",
            "in": "query",
            "description": (
                "Rows per page. Without it JSON (and any format given a cursor) answers "
                f"pages of {DEFAULT_LIMIT}, and the other formats stream the whole range."
            ),
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
        },
        "cursor": {
            "name": "cursor",
            "in": "query",
            "description": (
                "The next of the previous page (also sent as X-Next-Cursor and in Link). "
                "Opaque and signed; valid only with the same sensor_id, start, end, "
                "resolution and agg. fields, limit and format may change between pages."
            ),
            "schema": {
                "type": "string",
                "maxLength": cursor.MAX_LENGTH,
                "pattern": _CURSOR_PATTERN,
            },
        },
        "format": {
            "name": "format",
            "in": "query",
            "description": (
                "The answer's media type: "
                + ", ".join(f"{name} {MEDIA_TYPES[name]}" for name in query.FORMATS)
                + ". json always answers a page; "
                + ", ".join(query.STREAMED)
                + " stream the whole range unless limit or cursor is given."
            ),
            "schema": {"type": "string", "enum": list(query.FORMATS), "default": "json"},
        },
        "resolution": {
            "name": "resolution",
            "in": "query",
            "description": (
                "Downsample to buckets of this width, a whole number and a unit (ms, s, m, "
                f"h, d), from {_resolution(downsample.MIN_RESOLUTION_US)} to "
                f"{_resolution(downsample.MAX_RESOLUTION_US)}. Buckets start at whole "
                "multiples of the width since the UNIX epoch, so the first may start before "
                "start (it holds only the frames from start on); buckets without frames are "
                "left out. Scalar fields only."
            ),
            "schema": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d)$"},
            "example": "1s",
        },
        "history": {
            "name": "history",
            "in": "query",
            "description": (
                "On a stream opened without Last-Event-ID: send the sensor's last this many "
                "chunks first (default none: from the next commit on)."
            ),
            "schema": {"type": "integer", "minimum": 1, "maximum": settings.live_replay_chunks},
        },
        "agg": {
            "name": "agg",
            "in": "query",
            "description": "How each bucket aggregates its frames; needs resolution.",
            "schema": {
                "type": "string",
                "enum": list(query.AGGREGATES),
                "default": query.AGGREGATES[0],
            },
        },
    }


# --- responses --------------------------------------------------------------------


def _headers() -> dict[str, Any]:
    return {
        "Link": {
            "description": 'rel="next": this request with cursor= for the following page.',
            "schema": {"type": "string", "pattern": '^<[^>]+>; rel="next"$'},
        },
        "X-Next-Cursor": {
            "description": "The cursor of the following page, when there is one.",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": cursor.MAX_LENGTH,
                "pattern": _CURSOR_PATTERN,
            },
        },
        "X-Next-Sensor": {
            "description": "The cursor of the following page, when there is one.",
            "schema": _ref("schemas", "SensorId"),
        },
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        },
        "RateLimit-Limit": {
            "description": "Requests this client may make at once (the bucket size); "
            "this header and the next two come when a rate limit is set.",
            "schema": {"type": "integer", "minimum": 1},
        },
        "RateLimit-Remaining": {
            "description": "Requests this client may make now.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "RateLimit-Reset": {
            "description": "Seconds until this client's allowance is whole again.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "WWW-Authenticate": {
            "description": "The scheme to authenticate with.",
            "required": True,
            "schema": {"type": "string", "pattern": "^Bearer "},
        },
    }


_RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def _header_refs(*names: str) -> dict[str, Any]:
    return {name: _ref("headers", name) for name in names}


def _problem(description: str, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": _content(_ref("schemas", "Problem"), problems.MEDIA_TYPE),
    }
    if headers:
        response["headers"] = _header_refs(*headers)
    return response


def _responses(settings: Settings) -> dict[str, Any]:
    if settings.rate_limit:
        limited = (
            f"More than {settings.rate_limit:g} requests/s, in bursts of up to "
            f"{settings.rate_burst}, from this client (its API key, else its address)."
        )
    else:
        limited = "Over the per-client rate limit (this process sets none)."
    return {
        "BadRequest": _problem(
            "A parameter is invalid; the problem's parameter names it.", *_RATE_HEADERS
        ),
        "Unauthorized": _problem(
            "No Authorization: Bearer header with a valid API key.", "WWW-Authenticate"
        ),
        "NotFound": _problem("No sensor of this sensor_id has sent audio.", *_RATE_HEADERS),
        "TooManyRequests": _problem(limited, "Retry-After", *_RATE_HEADERS),
        "Unavailable": _problem(
            "The database cannot be reached right now, or this replica is answering "
            f"{settings.max_requests} requests already.",
            "Retry-After",
            *_RATE_HEADERS,
        ),
    }


def _feature_answer(settings: Settings, *, sensor: bool) -> dict[str, Any]:
    """The 200 of a feature route; ``sensor``: rows name their sensor (several)."""
    prefix = "Sensor" if sensor else ""
    rows = {"oneOf": [_ref("schemas", f"{prefix}Frame"), _ref("schemas", f"{prefix}Bucket")]}
    leading = "sensor_id, ts" if sensor else "ts"
    arrays = ", ".join(
        f"{name}_0..{name}_{width - 1}"
        for name, width in (("mel", settings.n_mels), ("mfcc", settings.n_mfcc))
    )
    columns = (
        f"{leading}, count (downsampled answers), then the fields asked for in the "
        "order of the fields parameter's enum"
    )
    sensor_column = "sensor_id (dictionary-encoded string), " if sensor else ""
    typed = (
        f"Columns {sensor_column}ts (timestamp, microseconds, UTC), count (int64, "
        "downsampled answers), each scalar field as float32 and "
        f"mel/mfcc as fixed-size lists of {settings.n_mels}/{settings.n_mfcc} float32."
    )
    return {
        "description": (
            "The frames with start <= ts < end, or their buckets, ascending by ts"
            + (" then sensor_id" if sensor else "")
            + "; none for a sensor without frames there. A page carries Link and "
            "X-Next-Cursor when another follows; a streamed answer (no limit, no cursor, "
            "a format other than json) holds the whole range."
        ),
        "headers": _header_refs("Link", "X-Next-Cursor", *_RATE_HEADERS),
        "content": {
            MEDIA_TYPES["json"]: {
                "schema": {
                    "anyOf": [
                        _ref("schemas", f"{prefix}FramePage"),
                        _ref("schemas", f"{prefix}BucketPage"),
                    ]
                }
            },
            MEDIA_TYPES["ndjson"]: {
                "schema": {
                    **rows,
                    "description": f"Each line: one row as a JSON object ({columns}).",
                }
            },
            MEDIA_TYPES["csv"]: {
                "schema": {
                    "type": "string",
                    "description": (
                        f"RFC 4180 with a header row (header=present): {columns}, with "
                        f"mel and mfcc spread over {arrays} (values past these widths "
                        "are left out, missing ones are empty cells)."
                    ),
                }
            },
            MEDIA_TYPES["arrow"]: {
                "schema": {"description": f"An Arrow IPC stream. {typed}"},
            },
            MEDIA_TYPES["parquet"]: {
                "schema": {"description": f"A Parquet file, zstd-compressed. {typed}"},
            },
        },
    }


def _operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    *,
    description: str | None = None,
    parameters: tuple[str, ...] = (),
    errors: tuple[tuple[str, str], ...] = (),
    v1: bool = False,
    auth: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    for status, name in errors:
        responses[status] = _ref("responses", name)
    if v1:
        if auth:
            responses["401"] = _ref("responses", "Unauthorized")
        responses["429"] = _ref("responses", "TooManyRequests")
        responses["503"] = _ref("responses", "Unavailable")
        ok = {"headers": _header_refs(*_RATE_HEADERS), **ok}
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    operation["responses"] = dict(sorted(responses.items()))
    if v1 and auth:
        operation["security"] = [{"bearer": []}]
    return operation


_FEATURE_PARAMETERS = ("start", "end", "fields", "resolution", "agg", "limit", "cursor", "format")


def _v1_paths(settings: Settings, auth: bool) -> dict[str, Any]:
    features = (
        "Frames with start <= ts < end or, with resolution, buckets of them aggregated "
        "by agg. format=json answers a page (limit rows, next to go on); ndjson, csv, "
        "arrow and parquet answer a page when limit or cursor is given, and otherwise "
        "the whole range, streamed."
    )
    return {
        "/v1/sensors": {
            "get": _operation(
                "listSensors",
                "Every sensor that has sent audio, with its summary, a page at a time.",
                {
                    "description": "A page of sensors; Link and X-Next-Cursor when another "
                    "follows.",
                    "headers": {
                        "Link": _ref("headers", "Link"),
                        "X-Next-Cursor": _ref("headers", "X-Next-Sensor"),
                        **_header_refs(*_RATE_HEADERS),
                    },
                    "content": _content(_ref("schemas", "SensorList")),
                },
                parameters=("sensors_limit", "sensors_cursor"),
                errors=(("400", "BadRequest"),),
                v1=True,
                auth=auth,
            )
        },
        "/v1/sensors/{sensor_id}": {
            "get": _operation(
                "getSensor",
                "One sensor's summary, last seq and the seqs never received.",
                {
                    "description": "The sensor.",
                    "content": _content(_ref("schemas", "SensorStatus")),
                },
                parameters=("sensor_id",),
                errors=(("400", "BadRequest"), ("404", "NotFound")),
                v1=True,
                auth=auth,
            )
        },
        "/v1/sensors/{sensor_id}/features": {
            "get": _operation(
                "getFeatures",
                "One sensor's frames or downsampled buckets in a time range.",
                _feature_answer(settings, sensor=False),
                description=features,
                parameters=("sensor_id", *_FEATURE_PARAMETERS),
                errors=(("400", "BadRequest"),),
                v1=True,
                auth=auth,
            )
        },
        "/v1/sensors/{sensor_id}/live": {
            "get": _operation(
                "streamSensor",
                "One sensor's chunks as they are committed, as Server-Sent Events.",
                {
                    "description": (
                        "An endless text/event-stream. `retry: 2000` first; then one "
                        "`event: chunk` per committed chunk with frames, in seq order, "
                        "`id:` the highest seq sent so far, followed by `;` and the seqs "
                        "below it not sent yet when there are any (`17;12-14,16`: a chunk "
                        "committed after a later one still comes, and a resume from that "
                        "id gets it too) "
                        'and `data:` {"sensor_id", "seq", "frames"} with the frames as '
                        "in a JSON feature answer. A comment line (`: keep-alive`) every "
                        f"{live.KEEPALIVE_S:g} s when nothing else is sent. `event: missed`"
                        ' {"from", "to", "reason"} (id: to) when a resumed stream skips '
                        "seqs beyond the window; `event: close` "
                        '{"reason", "detail"} before the server ends the stream: reason '
                        "behind (the client fell more than "
                        f"{settings.live_replay_chunks} seqs behind), shutdown, "
                        "unavailable (the database), or no-feed."
                    ),
                    "headers": {
                        "Cache-Control": {
                            "description": "no-cache",
                            "schema": {"type": "string"},
                        }
                    },
                    "content": {live.MEDIA_TYPE: {"schema": _ref("schemas", "LiveEvent")}},
                },
                description=(
                    "Any API replica streams any sensor: writers announce each committed "
                    "batch (PostgreSQL NOTIFY) and every replica reads what was announced. "
                    "Send Last-Event-ID (a request header: the last id received) to resume "
                    f"after that seq without a gap: at most {settings.live_replay_chunks} "
                    "seqs back, else an event missed says what was skipped and the newest "
                    "chunks follow. A client that takes no bytes for "
                    f"{settings.live_send_timeout_s:g} s is cut off. At most "
                    f"{settings.max_live_streams} streams are open on a replica (503 past "
                    "that); they do not count against the bound on requests in flight."
                ),
                parameters=("sensor_id", "fields", "history"),
                errors=(("400", "BadRequest"), ("404", "NotFound")),
                v1=True,
                auth=auth,
            )
        },
        "/v1/features": {
            "get": _operation(
                "getFeaturesOfSensors",
                "Several sensors' frames or downsampled buckets in a time range, merged.",
                _feature_answer(settings, sensor=True),
                description=features
                + " Rows of the same ts come in sensor_id order; each names its sensor.",
                parameters=("sensor_ids", *_FEATURE_PARAMETERS),
                errors=(("400", "BadRequest"),),
                v1=True,
                auth=auth,
            )
        },
    }


def _live_paths() -> dict[str, Any]:
    """The live pages: static, no key needed (they ask for one when /v1 does)."""

    def page(what: str) -> dict[str, Any]:
        return {
            "description": f"{what}: a self-contained page (its script and style from "
            "/live/assets/, data from /v1 on this origin).",
            "content": _content({"type": "string"}, HTML),
        }

    paths: dict[str, Any] = {
        "/live/": {
            "get": _operation(
                "liveSensors",
                "A page listing every sensor (last seen, chunks, frames, gaps), each "
                "linking to its live page.",
                page("The sensors"),
            )
        },
        "/live/{sensor_id}": {
            "get": _operation(
                "liveSensor",
                "A page drawing one sensor as its chunks are committed: a scrolling mel "
                "spectrogram and lines of rms, centroid and dominant frequency.",
                page("The sensor's live view"),
                parameters=("sensor_id",),
                errors=(("400", "BadRequest"),),
            )
        },
    }
    for name, media_type in live.ASSETS.items():
        paths[f"/live/assets/{name}"] = {
            "get": _operation(
                "liveAsset" + name.split(".")[1].upper(),
                f"The live pages' {name}.",
                {"description": name, "content": _content({"type": "string"}, media_type)},
            )
        }
    return paths


def _service_paths() -> dict[str, Any]:
    status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    ready = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {"status": {"const": "ready"}, "checks": _ref("schemas", "Checks")},
    }
    return {
        "/healthz": {
            "get": _operation(
                "health", "Liveness.", {"description": "Alive.", "content": _content(status)}
            )
        },
        "/readyz": {
            "get": _operation(
                "ready",
                "Readiness: every enabled role is up and its dependencies reachable.",
                {"description": "Ready.", "content": _content(ready)},
                errors=(("503", "NotReady"),),
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics of this process (text exposition format 0.0.4).",
                {
                    "description": "Counters, gauges and histograms; see the README's Operating "
                    "section.",
                    "content": _content({"type": "string"}, metrics.CONTENT_TYPE),
                },
            )
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document.",
                {"description": "OpenAPI 3.1.", "content": _content({"type": "object"})},
            )
        },
        "/docs": {
            "get": _operation(
                "docs",
                "This document as a readable page.",
                {
                    "description": "A self-contained HTML page that renders /openapi.json.",
                    "content": _content({"type": "string"}, HTML),
                },
            )
        },
    }


def document(settings: Settings) -> dict[str, Any]:
    """The document for a process with ``settings``."""
    auth = bool(settings.api_key_digests)
    responses = {"NotReady": _problem("Not ready; the problem lists the reasons.")}
    components: dict[str, Any] = {"schemas": _schemas(), "responses": responses}
    paths = _service_paths()
    if settings.api:
        paths.update(_v1_paths(settings, auth))
        paths.update(_live_paths())
        components["parameters"] = _parameters(settings)
        components["headers"] = _headers()
        responses.update(_responses(settings))
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "soundstream",
            "version": "1",
            "description": (
                "Spectral features of sensor audio, per sensor and time range. Every error "
                f"is an RFC 9457 problem ({problems.MEDIA_TYPE}); /docs renders this "
                "document as a page."
            ),
        },
        "paths": paths,
        "components": components,
    }
