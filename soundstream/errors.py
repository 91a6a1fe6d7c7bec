"""The project's own exceptions: few, named, and carrying what a caller needs."""

from __future__ import annotations


class SoundstreamError(Exception):
    """Base of every error this package raises on purpose."""


class SettingsError(SoundstreamError):
    """A ``SOUNDSTREAM_*`` variable is missing or has a bad value."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class Malformed(SoundstreamError):
    """A message breaks the wire format; ``reason`` is one line for ``x-error``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(SoundstreamError):
    """An HTTP request parameter is invalid; answered with a 4xx problem body."""

    def __init__(self, parameter: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{parameter}: {detail}")
        self.parameter = parameter
        self.detail = detail
        self.status = status


class RestartBudgetExhausted(SoundstreamError):
    """An actor crashed more often than the restart budget allows."""


class SchemaMissing(SoundstreamError):
    """The database has no soundstream schema (or an old one): run ``migrate``."""


class TopologyMismatch(SoundstreamError):
    """The broker holds a queue or exchange of ours declared with other arguments."""
