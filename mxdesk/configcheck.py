"""What check-config reports and the daemons refuse, beyond the file's own errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from mxdesk import configtls
from mxdesk.config import Config, ConfigError, load
from mxdesk.configlines import locate_in
from mxdesk.configread import Problem
from mxdesk.ownership import OwnershipError, daemon_account

EXAMPLE_DOMAIN = "helpdesk.example"
EXAMPLE_MESSAGE = f"base_domain is the example {EXAMPLE_DOMAIN}: set your own domain"


@dataclass(frozen=True)
class Checked:
    """What check-config says of a file: its errors and its warnings, each with its line, and
    the configuration when there is no error."""

    config: Config | None
    errors: list[Problem]
    warnings: list[Problem]


def check(path: Path) -> Checked:
    """Every error of the file at path (its own, the daemons' user, the certificate and key
    the gateway loads) and every warning, errors or not."""
    try:
        config, errors = load(path), []
    except ConfigError as exc:
        if exc.as_read is None:  # not TOML, or not read at all
            return Checked(None, exc.problems, [])
        config, errors = exc.as_read, exc.problems
    more = locate_in(config.source, [*_user_errors(config), *_tls_errors(config)])
    errors = sorted([*errors, *more], key=lambda p: p.line or sys.maxsize)
    return Checked(None if errors else config, errors, warnings(config))


def _user_errors(config: Config) -> list[Problem]:
    try:
        daemon_account(config)
    except OwnershipError as exc:
        return [Problem("mxdesk.user", str(exc))]
    return []


def _tls_errors(config: Config) -> list[Problem]:
    return configtls.problems(config.gateway.tls_cert, config.gateway.tls_key)


def _example_domain(config: Config) -> bool:
    general = config.general
    return general.base_domain == EXAMPLE_DOMAIN and not general.allow_example_domain


def warnings(config: Config) -> list[Problem]:
    """What `check-config` points out in a file it accepts."""
    found = [Problem("mxdesk.base_domain", EXAMPLE_MESSAGE)] if _example_domain(config) else []
    return locate_in(config.source, found)


def daemon_errors(config: Config, *, gateway: bool = True) -> list[Problem]:
    """What a daemon refuses to run with, on top of the file's errors (a demo is spared
    them): the example domain and, for one that runs the gateway, a certificate and key that
    do not load; in check-config's words."""
    found = []
    if _example_domain(config):
        message = f"{EXAMPLE_MESSAGE} (allow_example_domain = true allows it, for tests and labs)"
        found.append(Problem("mxdesk.base_domain", message))
    if gateway:
        found += _tls_errors(config)
    return locate_in(config.source, found)
