"""Which acks can go as one: the delivery tags a channel has out, and how a set of
them to ack splits into one ``multiple`` ack and the rest.

An ack with ``multiple`` set acks every unsettled delivery up to its tag, so it may
cover only tags that are all being acked now: the longest run of the smallest
unsettled tags that are. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Unsettled:
    """Delivery tags received and not yet acked or returned, and the bytes of their
    bodies."""

    _tags: dict[int, int] = field(default_factory=dict)  # tag -> body bytes
    _heap: list[int] = field(default_factory=list)  # a superset of _tags, smallest first
    held_bytes: int = 0

    def add(self, tag: int, size: int = 0) -> None:
        self._tags[tag] = size
        self.held_bytes += size
        heapq.heappush(self._heap, tag)

    def discard(self, tag: int) -> None:
        """A delivery settled on its own (returned, or acked alone)."""
        self.held_bytes -= self._tags.pop(tag, 0)

    def __len__(self) -> int:
        return len(self._tags)

    def ack(self, tags: Iterable[int]) -> tuple[int | None, list[int]]:
        """Settle ``tags`` (all unsettled) as acks: the tag for one ``multiple`` ack
        (None if no run of them leads), and the tags to ack one by one."""
        pending = set(tags)
        upto = None
        heap = self._heap
        while heap and (heap[0] not in self._tags or heap[0] in pending):
            tag = heapq.heappop(heap)
            if tag in pending:
                pending.discard(tag)
                self.discard(tag)
                upto = tag
        for tag in pending:
            self.discard(tag)
        return upto, sorted(pending)
