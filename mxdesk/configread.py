"""Reading TOML tables into typed values, collecting every error with the key it concerns."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a configuration: the key ("" when none), what is wrong and what to
    do, and where it is written when it was read from a file."""

    key: str
    message: str
    file: Path | None = None
    line: int | None = None

    @classmethod
    def parse(cls, text: str) -> Problem:
        """A problem as the parser words it, "key: message", split into its parts."""
        key, sep, message = text.partition(": ")
        if not sep or not key or " " in key:
            return cls("", text)
        return cls(key, message)

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"

    def as_json(self) -> dict[str, Any]:
        return {
            "file": None if self.file is None else str(self.file),
            "line": self.line,
            "key": self.key or None,
            "message": self.message,
        }


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " (did you mean max_message_size?)" for the known name closest to a misspelt one."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


class Reader:
    """Reads one TOML table, remembering which keys were used and collecting errors."""

    def __init__(self, table: dict[str, Any], prefix: str, errors: list[str]) -> None:
        self.table = table
        self.prefix = prefix
        self.errors = errors
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def get(self, name: str, kind: type, default: Any) -> Any:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = _KINDS.get(kind, kind.__name__)
            self.errors.append(f"{self.key(name)}: expected {expected}, got {value!r}")
            return default
        return value

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            self.errors.append(f"{self.key(name)}: must be greater than 0, got {value!r}")
            return default
        return value

    def duration(self, name: str, default: float) -> float:
        """Seconds, given as a number of seconds or a string with a unit: "90s", "15m",
        "4h", "4d"; 0 or more."""
        self.seen.add(name)
        value = self.table.get(name, default)
        seconds = parse_duration(value)
        if seconds is None:
            self.errors.append(
                f'{self.key(name)}: expected seconds or a duration like "4h" or "180d",'
                f" got {value!r}"
            )
            return default
        return seconds

    def path(self, name: str, default: Path | None) -> Path | None:
        value = self.get(name, str, None)
        if value is None:
            return default
        if value == "":
            return None
        return Path(value)

    def finish(self) -> None:
        for extra in sorted(set(self.table) - self.seen):
            hint = did_you_mean(extra, self.seen)
            self.errors.append(f"{self.key(extra)}: unknown key{hint}")


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: Any) -> float | None:
    """A duration in seconds from 3600, 3600.0, "3600", "60m", "1h" or "1.5d"; None if it is
    none of these or negative."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        unit = _UNITS.get(text[-1])
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1.0)
        except ValueError:
            return None
    else:
        return None
    return seconds if seconds >= 0 and seconds == seconds else None


def host_ports(raw: Any, key: str, errors: list[str]) -> tuple[Listen, ...]:
    if not isinstance(raw, list):
        errors.append(f'{key}: expected a list of "host:port" strings')
        return ()
    result = []
    for item in raw:
        host, sep, port = str(item).rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            errors.append(f'{key}: {item!r} is not "host:port" (e.g. "127.0.0.1:2525")')
            continue
        result.append(Listen(host, int(port)))
    return tuple(result)
