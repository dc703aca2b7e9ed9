"""DNS providers: one interface (read, replace, delete RRsets of a zone), one module each."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mxdesk.dns.settings import ProviderConfig

TYPES = ("MX", "TXT", "A", "AAAA", "CNAME")


@dataclass(frozen=True)
class RRset:
    """The records of one name and type. Names have no final dot; TXT values are joined and
    unquoted, other values in presentation form. No values: the RRset is to be deleted."""

    name: str
    type: str
    ttl: int
    values: tuple[str, ...]


class ProviderError(Exception):
    """A provider refused or failed a request; temporary ones are worth retrying."""

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class Provider(Protocol):
    name: str

    async def read(self, zone: str, name: str) -> list[RRset]:
        """The RRsets of name (of the types in TYPES) as the provider holds them."""

    async def replace(self, zone: str, rrsets: Sequence[RRset]) -> None:
        """Replaces each RRset (deletes those without values) in one change: all or none."""


Factory = Callable[[ProviderConfig], Provider]
_REGISTRY: dict[str, Factory] = {}


def register(kind: str) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        _REGISTRY[kind] = factory
        return factory

    return add


def build(config: ProviderConfig) -> Provider:
    # Each module registers itself on import; importing them here keeps the CLI's start fast
    # for commands that publish nothing.
    from mxdesk.dns.providers import lexicon, powerdns, rfc2136  # noqa: F401

    return _REGISTRY[config.type](config)


class SecretUnavailable(ProviderError):
    """This process cannot read the provider's secret (a systemd credential of the daemon, or
    a file only the daemon's user may read): the gateway publishes instead."""


def read_secret(config: ProviderConfig, file_key: str, credential_key: str) -> str:
    """A provider's secret from its systemd credential or its file (never the command line)."""
    credential = config.option(credential_key)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if credential and directory:
        path = Path(directory) / str(credential)
    elif config.option(file_key):
        path = Path(str(config.option(file_key)))
    elif credential:
        raise SecretUnavailable(
            f"DNS provider {config.name!r}: its secret is the systemd credential {credential!r},"
            " which only the daemon has"
        )
    else:
        raise ProviderError(
            f"DNS provider {config.name!r}: set {file_key} (or {credential_key} under systemd)"
        )
    try:
        return path.read_text("utf-8")
    except PermissionError:
        raise SecretUnavailable(
            f"DNS provider {config.name!r}: {path} is not readable by this user"
        ) from None
    except OSError as exc:
        raise ProviderError(
            f"DNS provider {config.name!r}: cannot read {path} ({exc.strerror})"
        ) from None
