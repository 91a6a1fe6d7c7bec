"""RFC 3339 timestamps as the HTTP API reads and writes them.

Pure: strings in, aware datetimes out, and back. Frames are stored at microsecond
precision, so that is the precision of everything here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import numpy as np

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EXAMPLE = "2026-01-01T00:00:00Z"

# RFC 3339 section 5.6, restricted to what a query bound needs. ASCII digits only
# (``\d`` would admit other scripts' digits). A space is accepted as the offset
# sign because an unescaped '+' in a query string arrives as one.
_DATE_TIME = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<zone>[Zz]|(?P<sign>[+\- ])(?P<zone_hour>[0-9]{2}):(?P<zone_minute>[0-9]{2}))?"
)
_MAX_FRACTION_DIGITS = 9


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 date-time with a time zone -> an aware datetime in UTC.

    Fractional seconds beyond microseconds are rounded *up* to the next microsecond:
    stored times lie on the microsecond grid, and for the half-open ranges the API
    takes (``start <= ts < end``) rounding both bounds up selects exactly the stored
    times the caller's nanosecond bounds select.

    Raises ``ValueError`` with a message fit to show the caller.
    """
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"must be an RFC 3339 date-time such as {_EXAMPLE}")
    if match["zone"] is None:
        raise ValueError(f"has no time zone; end it with Z (UTC) or an offset, as in {_EXAMPLE}")
    fraction = match["fraction"] or ""
    if len(fraction) > _MAX_FRACTION_DIGITS:
        raise ValueError(f"has more than {_MAX_FRACTION_DIGITS} fractional second digits")
    if match["second"] == "60":
        raise ValueError("is a leap second (:60), which is not supported")
    offset = timedelta()
    if match["sign"] is not None:
        hours, minutes = int(match["zone_hour"]), int(match["zone_minute"])
        if hours > 23 or minutes > 59:
            raise ValueError("has an offset outside -23:59..+23:59")
        offset = timedelta(hours=hours, minutes=minutes)
        if match["sign"] == "-":
            offset = -offset
    nanoseconds = int(fraction.ljust(_MAX_FRACTION_DIGITS, "0"))
    try:
        local = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            tzinfo=timezone(offset),
        )
    except ValueError as exc:
        raise ValueError(f"is not a valid date and time ({exc})") from None
    try:
        return (local + (-(-nanoseconds // 1000)) * _MICROSECOND).astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 0001..9999") from None


def format_timestamp(value: datetime) -> str:
    """An aware datetime -> ``2026-01-01T00:00:00.032000Z``: UTC, six fractional digits."""
    if value.tzinfo is None:
        raise ValueError("a naive datetime has no defined instant")
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def to_micros(value: datetime) -> int:
    """Microseconds since the UNIX epoch (exact integer arithmetic)."""
    return (value - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The inverse of ``to_micros``; ``OverflowError`` outside the years 1..9999."""
    return EPOCH + micros * _MICROSECOND


# A formatted stamp as fields of fixed width, the separators filled in, and the
# ASCII digits of every number below 100 and below 1000, by number.
_STAMP = np.dtype(
    [
        *[("date", "S10"), ("t", "S1"), ("hour", "S2"), ("colon1", "S1"), ("minute", "S2")],
        *[("colon2", "S1"), ("second", "S2"), ("dot", "S1"), ("milli", "S3"), ("micro", "S3")],
        ("z", "S1"),
    ]
)
_BLANK = np.array([(b"", b"T", b"", b":", b"", b":", b"", b".", b"", b"", b"Z")], _STAMP)
_TWO = np.array([b"%02d" % i for i in range(100)], "S2")
_THREE = np.array([b"%03d" % i for i in range(1000)], "S3")


def format_micros(micros: np.ndarray) -> list[bytes]:
    """``format_timestamp`` of each of an array of microseconds since the UNIX epoch,
    as ASCII bytes, built as one array of fixed-width fields: only each distinct day
    is formatted by ``datetime``; the time of day is digits looked up by numpy."""
    seconds, fraction = np.divmod(np.asarray(micros, np.int64).reshape(-1), 1_000_000)
    days, second_of_day = np.divmod(seconds, 86_400)
    out = np.repeat(_BLANK, len(seconds))
    if len(days) and days[0] == days[-1] and (days == days[0]).all():  # a page's usual day
        out["date"] = (EPOCH + timedelta(days=int(days[0]))).date().isoformat()
    elif len(days):
        distinct, which = np.unique(days, return_inverse=True)
        dates = [(EPOCH + timedelta(days=int(d))).date().isoformat() for d in distinct]
        out["date"] = np.array(dates, "S10")[which.reshape(-1)]
    minute_of_day, second = np.divmod(second_of_day, 60)
    hour, minute = np.divmod(minute_of_day, 60)
    milli, micro = np.divmod(fraction, 1000)
    out["hour"], out["minute"], out["second"] = _TWO[hour], _TWO[minute], _TWO[second]
    out["milli"], out["micro"] = _THREE[milli], _THREE[micro]
    stamps: list[bytes] = out.view("S27").tolist()
    return stamps
