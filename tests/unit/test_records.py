"""Frame timestamps per DESIGN.md section 4, in exact integer arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from soundstream.core.records import frame_times_ns, frame_times_us, ns_to_us


def test_design_example() -> None:
    start = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
    us = frame_times_us(start, 3, 512, 16000)
    assert (us - start // 1000).tolist() == [0, 32_000, 64_000]


@given(
    start_ns=st.integers(0, 2**62),
    n=st.integers(0, 50),
    hop=st.integers(1, 8192),
    rate=st.integers(8000, 192000),
)
def test_matches_round_of_the_exact_ratio(start_ns: int, n: int, hop: int, rate: int) -> None:
    ns = frame_times_ns(start_ns, n, hop, rate)
    exact = [start_ns + round(Fraction(i * hop * 10**9, rate)) for i in range(n)]
    assert ns.tolist() == exact
    assert frame_times_us(start_ns, n, hop, rate).tolist() == [
        round(Fraction(t, 1000)) for t in exact
    ]


@given(st.integers(0, 2**62))
def test_ns_to_us_rounds_half_to_even(ns: int) -> None:
    assert ns_to_us(ns) == round(Fraction(ns, 1000))


def test_times_increase_strictly() -> None:
    ts = frame_times_us(123, 1000, 1, 192000)
    assert (np.diff(ts) > 0).all()


@given(
    start_ns=st.integers(0, 2**62) | st.integers(0, 2**52).map(lambda k: k * 1000 + 500),
    n=st.integers(0, 50),
    hop=st.sampled_from([16, 128, 256, 512, 1000, 1024, 2048]),
    rate=st.sampled_from([8000, 16000, 32000, 64000, 128000]),
)
def test_times_whole_microseconds_apart_round_as_the_exact_ratio(
    start_ns: int, n: int, hop: int, rate: int
) -> None:
    exact = [start_ns + round(Fraction(i * hop * 10**9, rate)) for i in range(n)]
    assert frame_times_us(start_ns, n, hop, rate).tolist() == [
        round(Fraction(t, 1000)) for t in exact
    ]
