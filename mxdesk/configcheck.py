"""What is doubtful in a valid configuration: check-config's warnings, the daemons' refusals."""

from __future__ import annotations

from mxdesk.config import Config
from mxdesk.configlines import locate_in
from mxdesk.configread import Problem

EXAMPLE_DOMAIN = "helpdesk.example"
EXAMPLE_MESSAGE = f"base_domain is the example {EXAMPLE_DOMAIN}: set your own domain"


def _example_domain(config: Config) -> bool:
    general = config.general
    return general.base_domain == EXAMPLE_DOMAIN and not general.allow_example_domain


def warnings(config: Config) -> list[Problem]:
    """What `check-config` points out in a file it accepts."""
    found = [Problem("mxdesk.base_domain", EXAMPLE_MESSAGE)] if _example_domain(config) else []
    return locate_in(config.source, found)


def daemon_errors(config: Config) -> list[Problem]:
    """What the gateway and the store refuse to run with, on top of the file's errors (a demo
    is spared them)."""
    if not _example_domain(config):
        return []
    message = f"{EXAMPLE_MESSAGE} (allow_example_domain = true allows it, for tests and labs)"
    return locate_in(config.source, [Problem("mxdesk.base_domain", message)])
