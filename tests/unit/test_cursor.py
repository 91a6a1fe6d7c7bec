"""The signed pagination cursor: round trips, is bound to its query, and anything not
issued with the API's key — forged, edited, truncated, random — is a 400 naming
``cursor``, never another exception."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from soundstream.errors import BadRequest
from soundstream.http.cursor import TAG_BYTES, VERSION, Cursors, Position, Scope

KEY = b"k" * 32
CURSORS = Cursors(KEY)
START, END = 1_767_225_600_000_000, 1_767_225_660_000_000
SCOPE = Scope(("mic-1",), START, END)
MANY = Scope(("a", "b", "c"), START, END, 1_000_000, "max")

sensor_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


def signed(document: Any, key: bytes = KEY) -> str:
    raw = orjson.dumps(document)
    tag = hmac.digest(key, raw, "sha256")[:TAG_BYTES]
    return base64.urlsafe_b64encode(raw + tag).rstrip(b"=").decode()


def reject(token: str, scope: Scope = SCOPE) -> str:
    with pytest.raises(BadRequest) as caught:
        CURSORS.decode(token, scope)
    assert caught.value.parameter == "cursor"
    assert caught.value.status == 400
    return caught.value.detail


def test_round_trip() -> None:
    token = CURSORS.encode(SCOPE, Position(START + 32_000))
    assert CURSORS.decode(token, SCOPE) == Position(START + 32_000, 0)
    assert "=" not in token and len(token) < 200
    token = CURSORS.encode(MANY, Position(START, 2))
    assert CURSORS.decode(token, MANY) == Position(START, 2)


@given(st.lists(sensor_ids, min_size=1, max_size=5), st.integers(0, 2**53), st.data())
def test_round_trips(sensors: list[str], start: int, data: st.DataObject) -> None:
    end = data.draw(st.integers(start + 1, start + 2**40))
    at = Position(
        data.draw(st.integers(start, end - 1)), data.draw(st.integers(0, len(sensors) - 1))
    )
    scope = Scope(tuple(sensors), start, end)
    assert CURSORS.decode(CURSORS.encode(scope, at), scope) == at


def test_bound_to_its_query() -> None:
    token = CURSORS.encode(SCOPE, Position(START))
    for other in (
        Scope(("mic-2",), START, END),
        Scope(("mic-1",), START + 1, END),
        Scope(("mic-1",), START, END - 1),
        Scope(("mic-1",), START, END, 1_000_000, "mean"),
        Scope(("mic-1", "mic-2"), START, END),
    ):
        assert "different query" in reject(token, other)


def test_another_replica_with_the_same_key_accepts_it() -> None:
    token = CURSORS.encode(SCOPE, Position(START))
    assert Cursors(KEY).decode(token, SCOPE) == Position(START)
    assert "not one this API issued" in reject(Cursors(b"x" * 32).encode(SCOPE, Position(START)))


def test_an_edited_cursor_is_refused_even_if_well_formed() -> None:
    document = {"v": VERSION, "q": SCOPE.digest(), "t": START, "i": 0}
    assert CURSORS.decode(signed(document), SCOPE) == Position(START)
    forged = signed(document, key=hashlib.sha256(b"guess").digest())
    assert "not one this API issued" in reject(forged)
    token = CURSORS.encode(SCOPE, Position(START))
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[10] ^= 1
    assert "not one this API issued" in reject(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    assert "not one this API issued" in reject(token[:-3])


def test_a_position_outside_its_range_is_refused() -> None:
    for position in (Position(START - 1), Position(END), Position(START, 1), Position(START, -1)):
        assert "outside the range" in reject(signed(_doc(position)))


def _doc(position: Position) -> dict[str, Any]:
    return {"v": VERSION, "q": SCOPE.digest(), "t": position.ts_us, "i": position.sensor}


@pytest.mark.parametrize(
    "document",
    [
        {"v": VERSION, "q": SCOPE.digest(), "t": True, "i": 0},
        {"v": VERSION, "q": SCOPE.digest(), "t": 1.5, "i": 0},
        {"v": VERSION, "q": 7, "t": START, "i": 0},
        {"v": 1, "q": SCOPE.digest(), "t": START, "i": 0},
        {"v": VERSION, "q": SCOPE.digest(), "t": START},
        [1, 2, 3],
        "text",
    ],
)
def test_signed_documents_of_another_shape_are_refused(document: Any) -> None:
    assert "not one this API issued" in reject(signed(document))


@given(st.text(max_size=600))
def test_arbitrary_text_raises_only_bad_request(token: str) -> None:
    reject(token)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_bad_request(raw: bytes) -> None:
    reject(base64.urlsafe_b64encode(raw).decode().rstrip("="))


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Cursors(b"short")
