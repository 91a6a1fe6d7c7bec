"""A feature request's parameters, parsed and checked: every way to get one wrong is a
``BadRequest`` naming the parameter, never an exception of another kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request

from soundstream.core.fields import FEATURE_FIELDS, SCALARS
from soundstream.core.timefmt import parse_timestamp, to_micros
from soundstream.core.wire import valid_sensor_id
from soundstream.errors import BadRequest
from soundstream.http.cursor import Scope
from soundstream.store import read

# Formats that can carry a whole range in one streamed answer; json pages.
STREAMED = ("ndjson", "csv", "arrow", "parquet")
FORMATS = ("json", *STREAMED)
AGGREGATES = ("mean", "min", "max")


@dataclass(frozen=True, slots=True)
class FeatureQuery:
    sensors: tuple[str, ...]  # sorted, distinct
    start: datetime
    end: datetime
    fields: list[str]
    limit: int | None  # None: the whole range, streamed (streamed formats only)
    form: str
    resolution_us: int | None
    agg: str
    token: str | None

    @property
    def scope(self) -> Scope:
        return Scope(
            self.sensors,
            to_micros(self.start),
            to_micros(self.end),
            self.resolution_us,
            self.agg if self.resolution_us else None,
        )


def sensor_id(text: str, name: str = "sensor_id") -> str:
    if not valid_sensor_id(text):
        raise BadRequest(name, f"{name} must match [A-Za-z0-9._-]{{1,64}}")
    return text


def sensor_ids(query: QueryParams, most: int) -> tuple[str, ...]:
    """``sensor_id=`` given once or more (a comma-separated list counts too)."""
    named = [part for value in query.getlist("sensor_id") for part in value.split(",")]
    if not named:
        raise BadRequest("sensor_id", "sensor_id is required, once per sensor")
    distinct = sorted({sensor_id(part) for part in named})
    if len(distinct) > most:
        raise BadRequest("sensor_id", f"at most {most} sensors per request; got {len(distinct)}")
    return tuple(distinct)


def features(
    query: QueryParams,
    sensors: tuple[str, ...],
    *,
    parse_resolution: Callable[[str], int],
    max_range_s: float,
    max_stream_range_s: float,
) -> FeatureQuery:
    start = _timestamp(query, "start")
    end = _timestamp(query, "end")
    if end <= start:
        raise BadRequest("end", "end must be later than start")
    form = one(query, "format") or "json"
    if form not in FORMATS:
        raise BadRequest("format", f"format must be one of {', '.join(FORMATS)}")
    text = one(query, "resolution")
    resolution_us = parse_resolution(text) if text else None
    agg = one(query, "agg") or "mean"
    if agg not in AGGREGATES:
        raise BadRequest("agg", f"agg must be one of {', '.join(AGGREGATES)}")
    if agg != "mean" and resolution_us is None:
        raise BadRequest("agg", "agg applies to downsampled answers: give resolution too")
    fields = _fields(query, downsampled=resolution_us is not None)
    limit = _limit(query)
    token = one(query, "cursor")
    if limit is None and (form not in STREAMED or token):
        limit = read.DEFAULT_LIMIT  # JSON always pages; a cursor resumes pages
    span_s = (end - start).total_seconds()
    most = max_range_s if limit is not None else max_stream_range_s
    if span_s > most:
        what = "a page" if limit is not None else "a streamed answer"
        raise BadRequest("end", f"end - start may span at most {most:.12g} s for {what}")
    return FeatureQuery(sensors, start, end, fields, limit, form, resolution_us, agg, token)


def one(query: QueryParams, name: str) -> str | None:
    values = query.getlist(name)
    if len(values) > 1:
        raise BadRequest(name, f"{name} must be given at most once")
    return values[0] if values else None


def _timestamp(query: QueryParams, name: str) -> datetime:
    text = one(query, name)
    if not text:
        raise BadRequest(name, f"{name} is required (an RFC 3339 date-time)")
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise BadRequest(name, f"{name} {exc}; got {text!r:.60}") from None


def _fields(query: QueryParams, *, downsampled: bool) -> list[str]:
    """Requested feature columns in their canonical order; all of them (all scalars
    when downsampled) when none is named.

    Every ``fields=`` given counts; blanks and repeats are ignored, and ``ts`` may be
    named (``fields=ts`` asks for timestamps alone) although it always comes.
    """
    named = {part.strip() for value in query.getlist("fields") for part in value.split(",")}
    named.discard("")
    allowed = SCALARS if downsampled else FEATURE_FIELDS
    if not named:
        return list(allowed)
    unknown = named.difference(("ts", *FEATURE_FIELDS))
    if unknown:
        listed = ", ".join(sorted(repr(name)[:40] for name in unknown)[:5])
        known = ", ".join(FEATURE_FIELDS)
        raise BadRequest("fields", f"fields has unknown names {listed}; known: ts, {known}")
    arrays = named.difference(("ts", *allowed))
    if arrays:
        raise BadRequest(
            "fields", f"{', '.join(sorted(arrays))} cannot be downsampled; ask for scalar fields"
        )
    return [name for name in allowed if name in named]


def _limit(query: QueryParams) -> int | None:
    text = one(query, "limit")
    if text is None or text == "":
        return None
    return bounded_int(query, "limit", read.MAX_LIMIT, read.DEFAULT_LIMIT)


def bounded_int(query: QueryParams, name: str, most: int, default: int) -> int:
    """An integer from 1 to ``most``; ``default`` when not given."""
    text = one(query, name)
    if text is None or text == "":
        return default
    # Plain ASCII digits only: int() would also take "+5", "1_000" and other scripts.
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not (1 <= int(text) <= most):
        raise BadRequest(name, f"{name} must be an integer from 1 to {most}; got {text!r:.20}")
    return int(text)


def next_page_headers(request: Request, token: str | None) -> dict[str, str]:
    """``Link: <...>; rel="next"`` and ``X-Next-Cursor`` when another page follows."""
    if token is None:
        return {}
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    params.append(("cursor", token))
    # A relative reference: right behind any proxy, whatever host the client used.
    target = f"{request.url.path}?{urlencode(params)}"
    return {"Link": f'<{target}>; rel="next"', "X-Next-Cursor": token}
