"""What each actor says about itself, read by ``/readyz``.

One ``Status`` is made by the supervisor and handed to the actors; nothing global.
"""

from __future__ import annotations


class Status:
    def __init__(self) -> None:
        self._problems: dict[str, str] = {}

    def expect(self, *names: str) -> None:
        """Components that must report up before the process is ready."""
        for name in names:
            self._problems.setdefault(name, "starting")

    def up(self, name: str) -> None:
        self._problems.pop(name, None)

    def down(self, name: str, reason: str) -> None:
        self._problems[name] = reason

    def is_down(self, name: str) -> bool:
        return name in self._problems

    def problems(self) -> list[str]:
        return [f"{name}: {reason}" for name, reason in sorted(self._problems.items())]
