"""The headers of a malformed message's dead copy: the original's, plus the reason.

Pure, like ``wire``. pamqp, which encodes them, rejects or mangles some of the values
it decodes itself: ``bytes`` (a long string that is not UTF-8), doubles beyond float32
(it writes every float as 32-bit), integers beyond 64 bits, keys over 128 bytes (cut,
so two may collide), strings that are not UTF-8-encodable, timestamps before 1970,
and nesting deep enough to exhaust the stack. Such values are converted or dropped
here, so the copy can always be published.
"""

from __future__ import annotations

import calendar
import struct
import time
from datetime import UTC, datetime
from decimal import Decimal

from soundstream.core.wire import INT64_MAX, INT64_MIN, field_kind, short_repr

ERROR_HEADER = "x-error"
ROUTING_KEY_HEADER = "x-original-routing-key"
DROPPED_HEADER = "x-dropped-headers"
CONVERTED_HEADER = "x-converted-headers"
_OURS = frozenset((ERROR_HEADER, ROUTING_KEY_HEADER, DROPPED_HEADER, CONVERTED_HEADER))
MAX_KEY_BYTES = 128
MAX_NESTING = 32
MAX_TEXT = 1000
_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1


def dead_letter_headers(headers: object, reason: str, routing_key: str | None) -> dict[str, object]:
    """The headers of a malformed message's dead copy; always an encodable AMQP table.

    The original headers (when a table) are kept, plus ``x-error`` (the reason) and
    ``x-original-routing-key`` (``""`` when unknown). A header whose value could not be
    encoded again is dropped and named in ``x-dropped-headers`` (``"name: why"``); one
    holding ``bytes`` gets them as a byte array instead, and is named in
    ``x-converted-headers``. These four names are ours: an original's are replaced.
    """
    out: dict[str, object] = {}
    dropped: list[str] = []
    converted: list[str] = []
    if isinstance(headers, dict):
        for key, value in headers.items():
            if key in _OURS:  # from an earlier dead-lettering: replaced, not mixed
                continue
            try:
                name = _table_key(key)
                clean, changed = _encodable(value, 0)
            except _Unencodable as exc:
                dropped.append(f"{_key_name(key)}: {exc}")
                continue
            out[name] = clean
            if changed:
                converted.append(name)
    elif headers is not None:
        dropped.append(f"(headers): {field_kind(headers)}, not a table")
    out[ERROR_HEADER] = _text(reason)
    out[ROUTING_KEY_HEADER] = _text(routing_key)
    if dropped:
        out[DROPPED_HEADER] = dropped
    if converted:
        out[CONVERTED_HEADER] = converted
    return out


class _Unencodable(Exception):
    """A header value pamqp would reject or mangle; the message says why."""


def _text(value: object) -> str:
    text = value if isinstance(value, str) else "" if value is None else field_kind(value)
    # Lone surrogates cannot be encoded as UTF-8; spell them out instead.
    return text[:MAX_TEXT].encode("utf-8", "backslashreplace").decode("utf-8")


def _table_key(key: object) -> str:
    if not isinstance(key, str):
        raise _Unencodable(f"key is not a string ({field_kind(key)})")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Unencodable("key is not encodable as UTF-8") from None
    if size > MAX_KEY_BYTES:
        # pamqp would cut it, and two cut keys may collide.
        raise _Unencodable(f"key is {size} bytes, over {MAX_KEY_BYTES}")
    return key


def _key_name(key: object) -> str:
    """How a dropped key is named in ``x-dropped-headers``: itself, or a short repr."""
    if not isinstance(key, str):
        return f"<{field_kind(key)}>"
    try:
        return _table_key(key)
    except _Unencodable:
        return short_repr(key)


def _encodable(value: object, depth: int) -> tuple[object, bool]:
    """``(value to send, whether it was converted)``, or ``_Unencodable``."""
    if value is None or isinstance(value, bool | bytearray):
        return value, False
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _Unencodable("integer outside 64 bits")
    elif isinstance(value, float):
        try:
            struct.pack(">f", value)  # pamqp writes every float as 32-bit
        except OverflowError:
            raise _Unencodable("float beyond the 32-bit range") from None
    elif isinstance(value, str):
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise _Unencodable("string not encodable as UTF-8") from None
        if size > _UINT32_MAX:
            raise _Unencodable("string over 4 GiB")
    elif isinstance(value, bytes):
        return bytearray(value), True
    elif isinstance(value, Decimal):
        _check_decimal(value)
    elif isinstance(value, datetime | time.struct_time):
        _check_timestamp(value)
    elif isinstance(value, list | dict):
        if depth >= MAX_NESTING:
            raise _Unencodable(f"nested deeper than {MAX_NESTING}")
        return _encodable_container(value, depth + 1)
    else:
        raise _Unencodable(f"{field_kind(value)} is no AMQP field type")
    return value, False


def _encodable_container(
    value: list[object] | dict[object, object], depth: int
) -> tuple[object, bool]:
    changed = False
    if isinstance(value, list):
        items: list[object] = []
        for item in value:
            clean, was_changed = _encodable(item, depth)
            items.append(clean)
            changed |= was_changed
        return items, changed
    table: dict[str, object] = {}
    for key, item in value.items():
        name = _table_key(key)
        table[name], was_changed = _encodable(item, depth)
        changed |= was_changed
    return table, changed


def _check_decimal(value: Decimal) -> None:
    # pamqp sends (scale octet, signed 32-bit mantissa), value = mantissa * 10**-scale.
    try:
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int):
            raise _Unencodable("decimal NaN or infinity")
        if exponent > 0:
            scale, mantissa = 0, int(value) if value.adjusted() < 12 else INT64_MAX
        else:
            scale = -exponent
            if scale > 255:
                raise _Unencodable("decimal scale over 255")
            mantissa = int(value.scaleb(scale))
    except (ArithmeticError, ValueError):
        raise _Unencodable("decimal not representable") from None
    if not -(2**31) <= mantissa < 2**31:
        raise _Unencodable("decimal mantissa outside 32 bits")


def _check_timestamp(value: datetime | time.struct_time) -> None:
    # pamqp sends whole seconds as an unsigned 64-bit count; naive means UTC.
    try:
        if isinstance(value, datetime):
            if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
                value = value.replace(tzinfo=UTC)
            seconds = int(value.timestamp())
        else:
            seconds = calendar.timegm(value)
    except (ArithmeticError, ValueError, TypeError, OSError):
        raise _Unencodable("timestamp not representable") from None
    if not 0 <= seconds <= _UINT64_MAX:
        raise _Unencodable("timestamp before 1970 or beyond 64 bits")
