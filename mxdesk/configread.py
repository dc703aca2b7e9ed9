"""Reading TOML tables into typed values, collecting every error with the key it concerns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


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
            self.errors.append(f"{self.key(name)}: expected {kind.__name__}, got {value!r}")
            return default
        return value

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            self.errors.append(f"{self.key(name)}: must be greater than 0, got {value!r}")
            return default
        return value

    def path(self, name: str, default: Path | None) -> Path | None:
        value = self.get(name, str, None)
        if value is None:
            return default
        if value == "":
            return None
        return Path(value)

    def finish(self) -> None:
        for extra in sorted(set(self.table) - self.seen):
            self.errors.append(f"{self.key(extra)}: unknown key")


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
