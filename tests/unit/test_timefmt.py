from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from soundstream.core.timefmt import (
    format_micros,
    format_timestamp,
    from_micros,
    parse_timestamp,
    to_micros,
)

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", JAN_1),
        ("2026-01-01t00:00:00z", JAN_1),
        ("2026-01-01T01:00:00+01:00", JAN_1),
        ("2025-12-31T22:30:00-01:30", JAN_1),
        ("2026-01-01T00:00:00-00:00", JAN_1),
        # An unescaped '+' in a query string arrives as a space.
        ("2026-01-01T01:00:00 01:00", JAN_1),
        ("2026-01-01T00:00:00.032Z", JAN_1 + timedelta(milliseconds=32)),
        ("2026-01-01T00:00:00.5Z", JAN_1 + timedelta(milliseconds=500)),
        ("2026-01-01T00:00:00.000001Z", JAN_1 + timedelta(microseconds=1)),
        # Beyond microseconds: rounded up onto the microsecond grid.
        ("2026-01-01T00:00:00.000000001Z", JAN_1 + timedelta(microseconds=1)),
        ("2026-01-01T00:00:00.000001000Z", JAN_1 + timedelta(microseconds=1)),
        ("2026-01-01T00:00:00.999999999Z", JAN_1 + timedelta(seconds=1)),
        ("2024-02-29T12:00:00Z", datetime(2024, 2, 29, 12, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_parses_rfc3339(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-01-01T00:00:00", "no time zone"),
        ("2026-01-01T00:00:00.5", "no time zone"),
        ("2026-01-01", "RFC 3339"),
        ("2026-01-01 00:00:00Z", "RFC 3339"),
        ("", "RFC 3339"),
        ("yesterday", "RFC 3339"),
        ("1767225600", "RFC 3339"),
        ("2026-01-01T00:00:00+0100", "RFC 3339"),
        ("2026-01-01T00:00:00ZZ", "RFC 3339"),
        (" 2026-01-01T00:00:00Z", "RFC 3339"),
        ("2026-01-01T00:00:00.Z", "RFC 3339"),
        ("\uff12\uff10\uff12\uff16-01-01T00:00:00Z", "RFC 3339"),  # fullwidth digits
        ("2026-01-01T00:00:00.0000000001Z", "fractional"),
        ("2026-13-01T00:00:00Z", "not a valid date"),
        ("2026-02-30T00:00:00Z", "not a valid date"),
        ("2026-01-01T24:00:00Z", "not a valid date"),
        ("2026-01-01T00:60:00Z", "not a valid date"),
        ("2026-12-31T23:59:60Z", "leap second"),
        ("2026-01-01T00:00:00+24:00", "offset"),
        ("2026-01-01T00:00:00+01:60", "offset"),
        ("0000-01-01T00:00:00Z", "not a valid date"),
        ("0001-01-01T00:30:00+01:00", "0001..9999"),
        ("9999-12-31T23:30:00-01:00", "0001..9999"),
        ("9999-12-31T23:59:59.9999999Z", "0001..9999"),
    ],
)
def test_rejects_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_timestamp(text)


def test_formats_utc_with_six_digits() -> None:
    assert format_timestamp(JAN_1 + timedelta(milliseconds=32)) == "2026-01-01T00:00:00.032000Z"
    plus_two = timezone(timedelta(hours=2))
    assert (
        format_timestamp(datetime(2026, 1, 1, 2, tzinfo=plus_two)) == "2026-01-01T00:00:00.000000Z"
    )
    assert format_timestamp(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000000Z"


def test_format_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_timestamp(datetime(2026, 1, 1))


def test_micros() -> None:
    assert to_micros(JAN_1) == 1_767_225_600_000_000
    assert from_micros(1_767_225_600_000_032) == JAN_1 + timedelta(microseconds=32)
    with pytest.raises(OverflowError):
        from_micros(10**18)


aware = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9, minutes=30))]
    ),
)


@given(aware)
def test_format_then_parse_is_identity(value: datetime) -> None:
    assert parse_timestamp(format_timestamp(value)) == value


@given(aware)
def test_micros_round_trip(value: datetime) -> None:
    assert from_micros(to_micros(value)) == value


two_digits = st.integers(0, 99).map("{:02d}".format)
shaped = st.builds(
    "{}-{}-{}T{}:{}:{}{}{}".format,
    st.integers(0, 9999).map("{:04d}".format),
    two_digits,
    two_digits,
    two_digits,
    two_digits,
    two_digits,
    st.text("0123456789", max_size=12).map(lambda digits: f".{digits}" if digits else ""),
    st.sampled_from(["Z", "z", "+00:00", "-23:59", "+99:99", " 05:30", "", "+5"]),
)


@given(shaped)
def test_any_shaped_input_parses_or_raises_value_error(text: str) -> None:
    try:
        parsed = parse_timestamp(text)
    except ValueError:
        return
    assert parsed.tzinfo is UTC


@given(st.text(max_size=60))
def test_arbitrary_text_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_timestamp(text)


@given(st.lists(st.integers(-(10**15), 253_402_300_799_999_999), max_size=40))
def test_a_column_of_stamps_formats_as_each_alone(micros: list[int]) -> None:
    formatted = format_micros(np.array(micros, np.int64))
    assert formatted == [format_timestamp(from_micros(us)).encode() for us in micros]
