"""The announcement payload: what the writer NOTIFYs and every API replica parses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soundstream.core.wire import SENSOR_ID
from soundstream.store import announce
from soundstream.store.announce import Feed, parse, payloads, seq_ranges

STAMP = "1767225600123456"


def as_sent(part: str) -> str:
    """What NOTIFY_SQL makes of a part: version and stamp first."""
    return f"{announce.VERSION} {STAMP} {part}"


def test_seqs_become_ascending_inclusive_ranges() -> None:
    assert seq_ranges([]) == []
    assert seq_ranges([7, 1, 3, 2, 2]) == [(1, 3), (7, 7)]
    assert seq_ranges(range(5, 70)) == [(5, 69)]


def test_a_batch_is_one_short_line() -> None:
    chunks = [("mic-7", seq) for seq in range(64)] + [("a.b_c", 3), ("a.b_c", 5)]
    (part,) = payloads(chunks)
    assert part == "a.b_c:3,5 mic-7:0-63"
    parsed = parse(as_sent(part))
    assert parsed.stamp_us == int(STAMP)
    assert parsed.ranges == {"a.b_c": [(3, 3), (5, 5)], "mic-7": [(0, 63)]}


def test_nothing_announced_is_no_payload() -> None:
    assert payloads([]) == []


def test_a_large_batch_is_split_under_the_notify_limit() -> None:
    # Every other seq of 500 sensors with long ids: far more than one NOTIFY takes.
    chunks = [(f"{'s' * 60}{n:04d}", seq) for n in range(500) for seq in range(0, 40, 2)]
    parts = payloads(chunks)
    assert len(parts) > 1
    for part in parts:
        assert len(as_sent(part).encode()) <= announce.MAX_PAYLOAD < 8000
    seen = {}
    for part in parts:
        for sensor, ranges in parse(as_sent(part)).ranges.items():
            seen.setdefault(sensor, []).extend(ranges)
    assert seen == {sensor: [(s, s) for s in range(0, 40, 2)] for sensor, _ in chunks}


def test_one_sensor_with_many_gaps_is_split_too() -> None:
    parts = payloads([("gappy", seq) for seq in range(0, 20_000, 2)])
    assert len(parts) > 1
    seqs = [s for part in parts for a, b in parse(as_sent(part)).ranges["gappy"] for s in (a, b)]
    assert seqs == [s for s in range(0, 20_000, 2) for _ in (0, 1)]


@given(
    st.lists(
        st.tuples(st.from_regex(SENSOR_ID, fullmatch=True), st.integers(0, 2**63 - 1)),
        max_size=300,
    ),
    st.integers(200, announce.MAX_PAYLOAD),
)
def test_what_is_announced_is_what_is_parsed(chunks: list[tuple[str, int]], limit: int) -> None:
    parts = payloads(chunks, limit=limit)
    got: dict[str, set[int]] = {}
    for part in parts:
        assert len(as_sent(part).encode()) <= limit
        for sensor, ranges in parse(as_sent(part)).ranges.items():
            for first, last in ranges:
                got.setdefault(sensor, set()).update({first, last})
                assert last >= first
    wanted: dict[str, set[int]] = {}
    for sensor, seq in chunks:
        wanted.setdefault(sensor, set()).add(seq)
    # Range ends are announced seqs, and every announced seq is in some range.
    assert {s: {q for q in seqs if q in wanted[s]} for s, seqs in got.items()} == got
    for sensor, seqs in wanted.items():
        ranges = [r for p in parts for r in parse(as_sent(p)).ranges.get(sensor, [])]
        assert all(any(a <= seq <= b for a, b in ranges) for seq in seqs)


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "v2 1 a:1",
        f"v1 {STAMP}",
        "v1 x a:1",
        f"v1 {STAMP} a",
        f"v1 {STAMP} :1",
        f"v1 {STAMP} a:5-3",
        f"v1 {STAMP} a:-1",
        f"v1 {STAMP} a:1,,2",
        f"v1 {STAMP} a:one",
    ],
)
def test_anything_else_is_refused(payload: str) -> None:
    with pytest.raises(ValueError):
        parse(payload)


def test_the_feed_passes_announcements_on_and_counts_what_it_could_not_read() -> None:
    heard: list[announce.Announcement] = []
    connects: list[bool] = []
    feed = Feed(heard.append, lambda: connects.append(True), clock=lambda: 5.0)
    assert feed.check.state == "starting" and not feed.listening
    feed.connected()
    assert feed.listening and feed.check.state == "up" and connects == [True]
    feed.notified(as_sent("mic-1:4"))
    feed.notified("garbage")
    assert [a.ranges for a in heard] == [{"mic-1": [(4, 4)]}]
    assert (feed.received, feed.malformed) == (1, 1)
    feed.lost("unreachable (OSError)")
    assert not feed.listening
    assert (feed.check.state, feed.check.reason) == ("down", "unreachable (OSError)")
