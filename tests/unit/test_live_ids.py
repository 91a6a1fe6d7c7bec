"""Live stream event ids: the highest seq sent and the seqs below it not sent yet,
written and read back exactly; anything else refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soundstream.http.live import EventId, parse_event_id

WINDOW = 60


@st.composite
def event_ids(draw: st.DrawFn) -> EventId:
    seq = draw(st.integers(0, 2**63 - 1))
    below = st.integers(max(0, seq - WINDOW), seq - 1) if seq else st.nothing()
    holes = draw(st.frozensets(below, max_size=WINDOW)) if seq else frozenset()
    return EventId(seq, holes)


@given(event_ids())
def test_an_id_reads_back_as_written(event_id: EventId) -> None:
    text = event_id.text()
    assert parse_event_id(text, WINDOW) == event_id
    expected = str(event_id.seq) + (";" if event_id.holes else "")
    assert text.startswith(expected) and (event_id.holes or text == expected)


@pytest.mark.parametrize(
    ("text", "seq", "holes"),
    [("17", 17, set()), ("17;12-14,16", 17, {12, 13, 14, 16}), ("5;4", 5, {4})],
)
def test_known_ids(text: str, seq: int, holes: set[int]) -> None:
    assert parse_event_id(text, WINDOW) == EventId(seq, frozenset(holes))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "-1",
        "3;",
        "3;5",
        "3;3",
        "3;2-1",
        "100;1",
        "3;1,,2",
        "3 ;1",
        "1" * 20,
        str(2**63),
        "3;1-" + "9" * 19,
    ],
)
def test_other_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(text, WINDOW)
