"""Capturing what the services log, for tests that check what never reaches
a log line. Loggers must not keep the configuration they first saw
(structlog's cache is off for the whole session, see tests/conftest.py), so
that a capture sees every logger."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import structlog

from idlegrid.common import logs


def quiet() -> None:
    """The session's logging: warnings and up, on the console, uncached."""
    logs.configure(fmt="console", level="warning")
    structlog.configure(cache_logger_on_first_use=False)


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, structlog (debug and up) and stdlib alike."""
    buf = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=buf)
    structlog.configure(cache_logger_on_first_use=False)
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        quiet()
