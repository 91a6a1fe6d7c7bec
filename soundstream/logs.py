"""structlog set-up: JSON lines in production, a readable console on a TTY.

The standard library's loggers (uvicorn, asyncpg, aiormq) are routed through the
same renderer so every line has one shape. Ids bound with
``structlog.contextvars`` (a delivery, a batch, a request, a trace) join every line
logged inside their block. Just before rendering, every string of a line, an
exception's text included, loses what looks like a secret: the password of a URL,
a bearer token, a ``password=`` value.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


HIDDEN = "***"
_SECRETS = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s]*@"), rf"\g<1>{HIDDEN}@"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), rf"\g<1> {HIDDEN}"),
    (
        re.compile(r"(?i)\b(password|passwd|pwd|api_?key|secret|token)=[^\s&,;\"']+"),
        rf"\g<1>={HIDDEN}",
    ),
)


def hide_secrets(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _hidden(value: Any) -> Any:
    if isinstance(value, str):
        return hide_secrets(value)
    if isinstance(value, dict):
        return {key: _hidden(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_hidden(item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return hide_secrets(repr(value) if isinstance(value, BaseException) else str(value))


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``hide_secrets`` in every value of the line."""
    for key, value in event.items():
        event[key] = _hidden(value)
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # Library chatter below WARNING says nothing an operator needs.
    for noisy in ("aiormq", "asyncpg", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _LEVELS[level]))
