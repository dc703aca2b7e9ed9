"""How mxdesk writes a time for people and programs: ISO 8601 in UTC, to the second."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_header_date: tuple[int, str] = (-1, "")


def timestamp(seconds: float) -> str:
    """A stored time (seconds since the epoch) as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """A configured duration for people: 90 s, 15 min, 4 h, 4 days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:g} s"


def header_date() -> str:
    """Now as an RFC 5322 date in GMT, for the Received: field of every message. The text
    changes once a second; email.utils.formatdate was two thirds of the work of writing the
    field, so the last second's text is kept."""
    global _header_date
    second = int(time.time())
    if _header_date[0] != second:
        from email.utils import formatdate  # not for the CLI's commands, which never need it

        _header_date = (second, formatdate(second, usegmt=True))
    return _header_date[1]
