"""What each actor and dependency says about itself, and since when: read by
``/readyz`` and by the readiness metrics.

One ``Status`` is made by the supervisor and handed to the actors; nothing global.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

UP = "up"
STARTING = "starting"
DOWN = "down"


@dataclass(frozen=True, slots=True)
class Check:
    state: str  # UP, STARTING or DOWN
    reason: str  # why not up; empty when up
    since: float  # UNIX time of the last change of state or reason


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` answers: why not ready (empty: ready), and every check."""

    problems: list[str]
    checks: dict[str, Check]


class Status:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._checks: dict[str, Check] = {}
        self._clock = clock
        self.changes = 0  # of readiness: all up, or not

    def expect(self, *names: str) -> None:
        """Components that must report up before the process is ready."""
        for name in names:
            if name not in self._checks:
                self._checks[name] = Check(STARTING, "starting", self._clock())

    def up(self, name: str) -> None:
        self._set(name, UP, "")

    def down(self, name: str, reason: str) -> None:
        self._set(name, DOWN, reason)

    def is_down(self, name: str) -> bool:
        check = self._checks.get(name)
        return check is not None and check.state != UP

    def ready(self) -> bool:
        return all(check.state == UP for check in self._checks.values())

    def problems(self) -> list[str]:
        return [
            f"{name}: {check.reason}"
            for name, check in sorted(self._checks.items())
            if check.state != UP
        ]

    def checks(self) -> dict[str, Check]:
        return dict(sorted(self._checks.items()))

    def _set(self, name: str, state: str, reason: str) -> None:
        old = self._checks.get(name)
        if old is not None and (old.state, old.reason) == (state, reason):
            return
        was_ready = self.ready()
        self._checks[name] = Check(state, reason, self._clock())
        if self.ready() != was_ready:
            self.changes += 1
