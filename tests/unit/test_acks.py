"""Acks that go as one: a ``multiple`` ack never covers a delivery not being acked."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from soundstream.ingest.acks import Unsettled


def test_a_leading_run_goes_as_one_ack() -> None:
    out = Unsettled()
    for tag in range(1, 8):
        out.add(tag)
    assert out.ack([1, 2, 3, 5]) == (3, [5])
    out.discard(4)  # returned to the queue
    assert out.ack([6, 7]) == (7, [])
    assert len(out) == 0


@given(st.data())
def test_acks_settle_exactly_the_tags_given(data: st.DataObject) -> None:
    """Against a model of the broker: every ack settles only what is being acked."""
    out = Unsettled()
    broker: set[int] = set()  # unacked at the broker
    next_tag = 1
    for _ in range(data.draw(st.integers(1, 30))):
        for _ in range(data.draw(st.integers(0, 10))):
            out.add(next_tag)
            broker.add(next_tag)
            next_tag += 1
        if not broker:
            continue
        returned = data.draw(st.sets(st.sampled_from(sorted(broker)), max_size=2))
        for tag in returned:
            out.discard(tag)
            broker.discard(tag)
        if not broker:
            continue
        acked = data.draw(st.sets(st.sampled_from(sorted(broker))))
        upto, singles = out.ack(acked)
        settled = set(singles)
        if upto is not None:
            settled |= {tag for tag in broker if tag <= upto}
        assert settled == acked
        broker -= settled
        assert len(out) == len(broker)
