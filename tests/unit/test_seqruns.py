"""Missing seqs from runs of received ones: the gaps a brute-force set walk finds,
however the runs are cut, ordered or overlapped, and whatever the bounds and cap."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from soundstream.core.seqruns import Run, gaps


def reference(received: set[int], above: int, below: int, limit: int) -> list[Run]:
    """Every seq between the bounds, one at a time."""
    found: list[Run] = []
    for seq in range(above + 1, below):
        if seq in received:
            continue
        if found and found[-1][1] == seq - 1:
            found[-1] = (found[-1][0], seq)
        else:
            found.append((seq, seq))
    return found[:limit]


def islands(seqs: set[int]) -> list[Run]:
    runs: list[Run] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def test_gaps_between_runs_and_up_to_the_last_seq() -> None:
    runs = [(0, 2), (5, 6)]
    assert gaps(runs, above=-1, below=9, limit=10) == [(3, 4), (7, 8)]
    # Early seqs that never came: a gap from 0.
    assert gaps([(3, 4), (8, 8)], above=-1, below=8, limit=10) == [(0, 2), (5, 7)]
    # The last seq counts as received even without a run of its own.
    assert gaps([(0, 2)], above=-1, below=3, limit=10) == []
    assert gaps([], above=-1, below=0, limit=10) == []
    assert gaps([], above=-1, below=1, limit=10) == [(0, 0)]


def test_seqs_at_or_below_the_expired_one_are_not_missing() -> None:
    assert gaps([(10, 11), (20, 21)], above=9, below=30, limit=10) == [(12, 19), (22, 29)]
    assert gaps([(10, 11)], above=4, below=30, limit=10) == [(5, 9), (12, 29)]
    # A run reaching past the bound from below it, and runs wholly below it.
    assert gaps([(0, 3), (5, 12), (15, 15)], above=9, below=20, limit=10) == [(13, 14), (16, 19)]


def test_runs_in_any_order_and_overlapping() -> None:
    assert gaps([(5, 9), (0, 1), (3, 6), (0, 0)], above=-1, below=12, limit=10) == [
        (2, 2),
        (10, 11),
    ]


def test_the_lowest_ranges_up_to_the_cap() -> None:
    every_other = [(seq, seq) for seq in range(0, 20, 2)]
    assert gaps(every_other, above=-1, below=19, limit=3) == [(1, 1), (3, 3), (5, 5)]
    assert gaps(every_other, above=-1, below=19, limit=0) == []
    assert len(gaps(every_other, above=-1, below=19, limit=100)) == 9


def test_runs_past_the_last_seq_are_cut_off() -> None:
    assert gaps([(0, 1), (7, 12)], above=-1, below=5, limit=10) == [(2, 4)]


@given(
    received=st.sets(st.integers(0, 200), max_size=120),
    above=st.integers(-1, 60),
    span=st.integers(0, 220),
    limit=st.integers(0, 30),
    cuts=st.lists(st.integers(0, 200), max_size=20),
    extra=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 8)), max_size=10),
    order=st.randoms(use_true_random=False),
)
def test_same_as_walking_every_seq(
    received: set[int],
    above: int,
    span: int,
    limit: int,
    cuts: list[int],
    extra: list[tuple[int, int]],
    order: random.Random,
) -> None:
    below = above + 1 + span
    # The maximal runs, cut in more places, plus runs overlapping them (deltas not
    # folded yet), shuffled: the same seqs received.
    runs: list[Run] = []
    covered = set(received)
    for first, last in islands(received):
        starts = sorted({first, *(cut for cut in cuts if first < cut <= last)})
        runs += [(a, b - 1) for a, b in zip(starts, [*starts[1:], last + 1], strict=True)]
    for start, length in extra:
        covered |= set(range(start, start + length + 1))
        runs.append((start, start + length))
    order.shuffle(runs)
    assert gaps(runs, above=above, below=below, limit=limit) == reference(
        covered, above, below, limit
    )
