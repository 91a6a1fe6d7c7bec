"""The opaque, signed pagination cursor of the feature routes.

A cursor says where the next page of one query starts: after the frame (or bucket)
at ``t`` of the ``i``-th sensor of the query, all in a small JSON document, with an
HMAC-SHA256 tag over it, base64url without padding. The tag's key comes from the
settings and is the same on every replica, so a page fetched from one replica goes
on from any other; a cursor that was not issued with that key (forged, truncated,
edited) is refused before anything in it is believed. The document also carries a
digest of the query it belongs to (sensors, start, end, resolution, aggregate): a
cursor pasted into another query is a clear 400, not a silently wrong page. The
fields, the page size and the format may change from page to page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from soundstream.errors import BadRequest

PARAMETER = "cursor"
VERSION = 2
TAG_BYTES = 16
# A real cursor is about 100 characters; anything much longer is not one of ours and
# is refused before any decoding work is spent on it.
MAX_LENGTH = 512
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
NOT_OURS = "cursor is not one this API issued"
_KEYS = frozenset({"v", "q", "t", "i"})


@dataclass(frozen=True, slots=True)
class Scope:
    """What makes two requests the same sequence of rows."""

    sensors: Sequence[str]
    start_us: int
    end_us: int
    resolution_us: int | None = None
    agg: str | None = None

    def digest(self) -> str:
        text = orjson.dumps(
            [list(self.sensors), self.start_us, self.end_us, self.resolution_us, self.agg]
        )
        return hashlib.sha256(text).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Position:
    """The last row already returned: its ``ts`` (µs since the epoch) and the index
    of its sensor in the query's sensors (0 for one sensor)."""

    ts_us: int
    sensor: int = 0


class Cursors:
    """Issues and checks cursors with one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a cursor key needs at least 16 bytes")
        self._key = key

    def encode(self, scope: Scope, position: Position) -> str:
        document = orjson.dumps(
            {"v": VERSION, "q": scope.digest(), "t": position.ts_us, "i": position.sensor}
        )
        token = document + self._tag(document)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")

    def decode(self, token: str, scope: Scope) -> Position:
        """Where the page after ``token`` starts, or ``BadRequest("cursor", ...)``."""
        document = self._verified(token)
        if document["q"] != scope.digest():
            raise BadRequest(
                PARAMETER,
                "cursor belongs to a different query; keep sensor_id, start, end,"
                " resolution and agg unchanged",
            )
        position = Position(document["t"], document["i"])
        # A downsampled page's first bucket starts at or before ``start``.
        low = scope.start_us
        if scope.resolution_us:
            low -= low % scope.resolution_us
        if not (low <= position.ts_us < scope.end_us) or not (
            0 <= position.sensor < len(scope.sensors)
        ):
            raise BadRequest(PARAMETER, "cursor points outside the range of its query")
        return position

    def _tag(self, document: bytes) -> bytes:
        return hmac.digest(self._key, document, "sha256")[:TAG_BYTES]

    def _verified(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_LENGTH or len(token) % 4 == 1 or not _ALPHABET.fullmatch(token):
            raise BadRequest(PARAMETER, NOT_OURS)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise BadRequest(PARAMETER, NOT_OURS) from None
        document, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if len(raw) <= TAG_BYTES or not hmac.compare_digest(tag, self._tag(document)):
            raise BadRequest(PARAMETER, NOT_OURS)
        # Signed by us: still check the shape, so a change of format never crashes.
        try:
            parsed = orjson.loads(document)
        except orjson.JSONDecodeError:
            raise BadRequest(PARAMETER, NOT_OURS) from None
        if not (
            isinstance(parsed, dict)
            and parsed.keys() == _KEYS
            and parsed["v"] == VERSION
            and isinstance(parsed["q"], str)
            and all(_is_int(parsed[key]) for key in ("t", "i"))
        ):
            raise BadRequest(PARAMETER, NOT_OURS)
        return parsed


def _is_int(value: object) -> bool:
    # JSON true/false decode to bool, which Python counts as an int.
    return isinstance(value, int) and not isinstance(value, bool)
