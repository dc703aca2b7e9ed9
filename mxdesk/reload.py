"""SIGHUP: the configuration read again, what may change while running applied, the rest logged."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mxdesk.config import Config, ConfigError
from mxdesk.configread import Listen
from mxdesk.daemon import ReloadError, Service, set_level

log = logging.getLogger("mxdesk.reload")

# What a running daemon takes from a new configuration; anything else needs a restart.
RELOADABLE = frozenset(
    {
        "mxdesk.log_level",
        "mxdesk.reserved_labels_file",
        "gateway.tls_cert",
        "gateway.tls_key",
        "gateway.max_message_size",
        "gateway.max_recipients",
        "gateway.max_connections",
        "gateway.max_connections_per_client",
        "gateway.idle_timeout",
        "gateway.session_timeout",
    }
)
# Settings that name a file whose content is the setting: a renewed certificate keeps its path.
FILES = ("gateway.tls_cert", "gateway.tls_key", "mxdesk.reserved_labels_file")
# The file's name of each part of Config ([mxdesk] is `general`).
SECTIONS = {
    "general": "mxdesk",
    "inbound_retry": "gateway.inbound_retry",
    "outbound_retry": "gateway.outbound_retry",
    "submission": "gateway.submission",
    "outbound": "gateway.outbound",
    "inbound_auth": "gateway.inbound_auth",
}


def settings(config: Config) -> dict[str, tuple[str, str, Any]]:
    """Every setting by the name the file gives it: (part of Config, field, value)."""
    found = {}
    for part in dataclasses.fields(config):
        section = getattr(config, part.name)
        if not dataclasses.is_dataclass(section) or isinstance(section, type):
            continue
        prefix = SECTIONS.get(part.name, part.name)
        for setting in dataclasses.fields(section):
            value = getattr(section, setting.name)
            found[f"{prefix}.{setting.name}"] = (part.name, setting.name, value)
    return found


def merged(running: Config, new: Config) -> Config:
    """The running configuration with the reloadable settings of the new one."""
    changes: dict[str, dict[str, Any]] = {}
    for key, (part, name, value) in settings(new).items():
        if key in RELOADABLE:
            changes.setdefault(part, {})[name] = value
    return dataclasses.replace(
        running,
        **{part: dataclasses.replace(getattr(running, part), **c) for part, c in changes.items()},
    )


def show(value: Any) -> str:
    if isinstance(value, Listen):
        return f"{value.host}:{value.port}"
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if value is None:
        return '""'
    if isinstance(value, (str, Path)):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _digests(config: Config) -> dict[str, str]:
    values = settings(config)
    found = {}
    for key in FILES:
        path = values[key][2]
        try:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path else ""
        except OSError as exc:
            found[key] = f"unreadable: {exc}"
    return found


class Reloader:
    """Reads the configuration again on SIGHUP: a bad file is logged, error by error, and the
    daemon keeps running as it was; otherwise each service takes what it can while running,
    and every changed setting is logged on one line."""

    def __init__(self, config: Config, load: Callable[[], Config]) -> None:
        self.config = config
        self.load = load
        self.digests = _digests(config)

    def __call__(self, services: Sequence[Service]) -> None:
        log.info("SIGHUP: reading %s again", self.config.source)
        try:
            new = self.load()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            self._kept(f"the new configuration has {_count(len(exc.problems), 'error')}")
            return
        target = merged(self.config, new)
        try:
            apply = [service.prepare_reload(target) for service in services]
        except ReloadError as exc:
            log.error("%s", exc)
            self._kept("the new configuration cannot be used")
            return
        for step in apply:
            step()
        set_level(target.general.log_level)
        digests = _digests(target)
        self._log_changes(target, new, digests)
        self.config, self.digests = target, digests

    def _kept(self, why: str) -> None:
        log.warning("%s: still running with the previous one", why)

    def _log_changes(self, target: Config, new: Config, digests: dict[str, str]) -> None:
        before, now, wanted = settings(self.config), settings(target), settings(new)
        changed = 0
        for key, (_, _, value) in wanted.items():
            was, running = before[key][2], now[key][2]
            if key in RELOADABLE and was != value:
                log.info("%s = %s (was %s)", key, show(value), show(was))
            elif key in FILES and digests[key] != self.digests[key]:
                log.info("%s: %s changed: in use now", key, value)
            elif key not in RELOADABLE and value != running:
                log.warning(
                    "%s = %s needs a restart (running with %s)",
                    key,
                    show(value),
                    show(running),
                )
            else:
                continue
            changed += 1
        if not changed:
            log.info("nothing changed")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
