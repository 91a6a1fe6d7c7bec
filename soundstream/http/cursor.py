"""The opaque pagination cursor of ``/v1/sensors/{sensor_id}/features``.

A cursor is base64url (unpadded) of a small JSON document naming the query it
belongs to (sensor, start, end) and the last ``ts`` already returned, all times in
microseconds since the epoch. It is not signed: it only says where to resume inside
a range the caller may read anyway, so forging one gains nothing. Binding it to the
query turns a cursor pasted into the wrong request into a clear 400 instead of a
silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

import orjson

from soundstream.core.timefmt import from_micros, to_micros
from soundstream.core.wire import valid_sensor_id
from soundstream.errors import BadRequest

PARAMETER = "cursor"
VERSION = 1
# A real cursor is ~150 characters; anything much longer is not one of ours and is
# refused before any decoding work is spent on it.
MAX_LENGTH = 512
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
NOT_OURS = "cursor is not one this API issued"
_KEYS = frozenset({"v", "s", "a", "b", "t"})


def encode(sensor_id: str, start: datetime, end: datetime, after: datetime) -> str:
    document = {
        "v": VERSION,
        "s": sensor_id,
        "a": to_micros(start),
        "b": to_micros(end),
        "t": to_micros(after),
    }
    return base64.urlsafe_b64encode(orjson.dumps(document)).rstrip(b"=").decode("ascii")


def decode(token: str, sensor_id: str, start: datetime, end: datetime) -> datetime:
    """The last ``ts`` of the previous page, or ``BadRequest("cursor", ...)``."""
    document = _document(token)
    if (document["s"], document["a"], document["b"]) != (
        sensor_id,
        to_micros(start),
        to_micros(end),
    ):
        raise BadRequest(
            PARAMETER,
            "cursor belongs to a different query; keep sensor_id, start and end unchanged",
        )
    after: int = document["t"]
    if not document["a"] <= after < document["b"]:
        raise BadRequest(PARAMETER, "cursor points outside the range of its query")
    return from_micros(after)


def _document(token: str) -> dict[str, Any]:
    if len(token) > MAX_LENGTH or len(token) % 4 == 1 or not _ALPHABET.fullmatch(token):
        raise BadRequest(PARAMETER, NOT_OURS)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError):
        raise BadRequest(PARAMETER, NOT_OURS) from None
    if not (
        isinstance(document, dict)
        and document.keys() == _KEYS
        and all(_is_int(document[key]) for key in ("v", "a", "b", "t"))
        and document["v"] == VERSION
        and valid_sensor_id(document["s"])
    ):
        raise BadRequest(PARAMETER, NOT_OURS)
    return document


def _is_int(value: object) -> bool:
    # JSON true/false decode to bool, which Python counts as an int.
    return isinstance(value, int) and not isinstance(value, bool)
