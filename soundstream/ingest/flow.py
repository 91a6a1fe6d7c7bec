"""How many deliveries one pipeline run holds, and where: shared by its actors.

The supervisor makes one ``Flow`` per pipeline run. The consumer counts what it
received and has not settled yet; it and the extractor and writer count what is
handed on for extraction and not yet in a write batch. The writer cuts a batch as
soon as it holds everything handed on (nothing more can arrive, so waiting would
only add latency), and the supervisor reads ``held`` and ``committed`` after a crash to
tell whether one message can be blamed for it.
"""

from __future__ import annotations

from soundstream.ingest.acks import Unsettled


class Flow:
    def __init__(self) -> None:
        self.window = 0  # the prefetch consuming with: 0 before it starts, 1 while cautious
        self.unsettled = Unsettled()  # received and not yet acked, returned or dead-lettered
        self.handed = 0  # handed to extraction, not yet in a write batch nor returned
        self.committed = 0  # chunks this run committed

    @property
    def held(self) -> int:
        return len(self.unsettled)

    def statistics(self) -> dict[str, int]:
        return {
            "window": self.window,
            "held": self.held,
            "handed": self.handed,
            "committed": self.committed,
        }
