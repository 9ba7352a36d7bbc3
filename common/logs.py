"""structlog set-up: JSON in production, console on a TTY, context variables
bound per request. Secrets never enter a log line: processors drop any key
that looks like one."""

from __future__ import annotations

import contextvars
import logging
import sys

import structlog

_SECRET_KEYS = frozenset(
    {"authorization", "api_key", "key", "token", "password", "secret", "service_token", "node_token"}
)


def _redact(_logger: object, _name: str, event: dict) -> dict:
    for k in event.keys() & _SECRET_KEYS:
        event[k] = "[redacted]"
    return event


def configure(*, fmt: str = "auto", level: str = "info", stream=None) -> None:
    """Configures structlog once for the process."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)


def log_field(name: str) -> contextvars.ContextVar:
    """structlog's own context variable behind the bound log field ``name``,
    to set directly on hot paths (binding through structlog costs a dict and
    a lookup per field; clearing, a walk over the whole context). Setting it
    to Ellipsis unbinds the field."""
    return contextvars.Context().run(structlog.contextvars.bind_contextvars, **{name: ...})[name].var
