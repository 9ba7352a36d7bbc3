"""Jinja2 filters of the console: amounts (integer micro-credits) shown as
credits, times shown in UTC, long ids shortened (the full id in a title)."""

from __future__ import annotations

MICROS_PER_CREDIT = 1_000_000


def credits(micros: int | None) -> str:
    """1234567 -> "1.234567" (exact: integer arithmetic, never a float)."""
    if micros is None:
        return "-"
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(int(micros)), MICROS_PER_CREDIT)
    return f"{sign}{whole:,}.{frac:06d}"


def when(iso: str | None) -> str:
    """An RFC 3339 time as "2025-01-02 03:04:05 UTC"."""
    if not iso:
        return "-"
    return iso.replace("T", " ")[:19] + " UTC"


def short(value: str | None, n: int = 8) -> str:
    return "-" if not value else value[:n]


FILTERS = {"credits": credits, "when": when, "short": short}
