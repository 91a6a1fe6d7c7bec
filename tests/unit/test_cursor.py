from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from soundstream.errors import BadRequest
from soundstream.http import cursor

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(minutes=1)
AFTER = START + timedelta(microseconds=32_000)

sensor_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
instants = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


def wrap(document: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(document)).rstrip(b"=").decode()


def reject(
    token: str, sensor_id: str = "mic-1", start: datetime = START, end: datetime = END
) -> str:
    with pytest.raises(BadRequest) as caught:
        cursor.decode(token, sensor_id, start, end)
    assert caught.value.parameter == "cursor"
    assert caught.value.status == 400
    return caught.value.detail


def test_round_trip() -> None:
    token = cursor.encode("mic-1", START, END, AFTER)
    assert cursor.decode(token, "mic-1", START, END) == AFTER
    assert "=" not in token
    assert len(token) < 200


@given(sensor_ids, instants, instants, instants)
def test_round_trips(sensor_id: str, a: datetime, b: datetime, c: datetime) -> None:
    start, after, end = sorted((a, b, c))
    if after == end:
        return  # ``after`` is a returned ts, so it lies before ``end``
    token = cursor.encode(sensor_id, start, end, after)
    assert cursor.decode(token, sensor_id, start, end) == after


def test_bound_to_its_query() -> None:
    token = cursor.encode("mic-1", START, END, AFTER)
    for other in (
        {"sensor_id": "mic-2"},
        {"start": START + timedelta(microseconds=1)},
        {"end": END - timedelta(microseconds=1)},
    ):
        assert "different query" in reject(token, **other)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x",
        "not a cursor",
        "eyJ2IjoxfQ==",  # padded
        "e30",  # {}
        "////",
        "a" * 513,
        wrap([1, 2]),
        wrap({"v": 1, "s": "mic-1", "a": 0, "b": 1}),
        wrap({"v": 2, "s": "mic-1", "a": 0, "b": 1, "t": 0}),
        wrap({"v": True, "s": "mic-1", "a": 0, "b": 1, "t": 0}),
        wrap({"v": 1, "s": "mic 1", "a": 0, "b": 1, "t": 0}),
        wrap({"v": 1, "s": "mic-1", "a": 0.5, "b": 1, "t": 0}),
        wrap({"v": 1, "s": "mic-1", "a": False, "b": 1, "t": 0}),
        wrap({"v": 1, "s": "mic-1", "a": 0, "b": 1, "t": 0, "x": 0}),
        base64.urlsafe_b64encode(b"\xff\xfe{").rstrip(b"=").decode(),
    ],
)
def test_rejects_what_it_did_not_issue(token: str) -> None:
    reject(token)


def test_rejects_a_position_outside_its_range() -> None:
    a, b = (int(t.timestamp() * 1_000_000) for t in (START, END))
    for t in (a - 1, b, b + 10**12):
        assert "outside" in reject(wrap({"v": 1, "s": "mic-1", "a": a, "b": b, "t": t}))


@given(st.text(max_size=600))
def test_arbitrary_text_raises_only_bad_request(token: str) -> None:
    try:
        cursor.decode(token, "mic-1", START, END)
    except BadRequest as exc:
        assert exc.parameter == "cursor"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_bad_request(raw: bytes) -> None:
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    try:
        cursor.decode(token, "mic-1", START, END)
    except BadRequest as exc:
        assert exc.parameter == "cursor"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=6)
    ),
    max_leaves=12,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "v": json_values,
            "s": json_values | sensor_ids,
            "a": json_values,
            "b": json_values,
            "t": json_values,
        },
    )
)
def test_arbitrary_documents_raise_only_bad_request(document: dict[str, Any]) -> None:
    try:
        cursor.decode(wrap(document), "mic-1", START, END)
    except BadRequest as exc:
        assert exc.parameter == "cursor"
