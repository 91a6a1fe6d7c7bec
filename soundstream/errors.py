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


# The part of a message a rejection is about, by how its reason begins: a bounded
# set, for metrics (the reason itself names values).
MESSAGE_PARTS = ("body", "headers", "content_type", "audio", "routing_key", "message_id")
_PART_BY_PREFIX = (
    ("body length", "audio"),
    ("body", "body"),
    ("header", "headers"),
    ("content_type", "content_type"),
    ("routing key", "routing_key"),
    ("message_id", "message_id"),
)


class Malformed(SoundstreamError):
    """A message breaks the wire format; ``reason`` is one line for ``x-error``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def part(self) -> str:
        """Which of ``MESSAGE_PARTS`` broke the format (the samples or WAV data: audio)."""
        return next(
            (part for prefix, part in _PART_BY_PREFIX if self.reason.startswith(prefix)), "audio"
        )


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
