"""How mxdesk writes a time for people and programs: ISO 8601 in UTC, to the second."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime


def timestamp(seconds: float) -> str:
    """A stored time (seconds since the epoch) as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """A configured duration for people: 90 s, 15 min, 4 h, 4 days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:g} s"


class PerSecond:
    """A text made from a whole second (since the epoch), made again only when the second
    changes: what every message's Received: field and every log line write."""

    def __init__(self, make: Callable[[int], str]) -> None:
        self._make = make
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, seconds: float) -> str:
        second = int(seconds)
        if self._last[0] != second:
            self._last = (second, self._make(second))
        return self._last[1]


def _rfc5322_gmt(second: int) -> str:
    from email.utils import formatdate  # not for the CLI's commands, which never need it

    return formatdate(second, usegmt=True)


_header_date = PerSecond(_rfc5322_gmt)


def header_date() -> str:
    """Now as an RFC 5322 date in GMT, for the Received: field of every message;
    email.utils.formatdate was two thirds of the work of writing the field."""
    return _header_date(time.time())
