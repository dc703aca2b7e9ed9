"""Provisioning a domain as a whole: the state row and its DKIM keys, and reading both back."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from mxdesk import dkimkeys, state
from mxdesk.config import Config


@dataclass(frozen=True)
class DkimRecord:
    name: str
    selector: str
    algorithm: str
    txt: str


@dataclass(frozen=True)
class DomainView:
    domain: state.Domain
    dkim: list[DkimRecord]


def add_hosted_domain(
    conn: sqlite3.Connection, config: Config, label: str, tenant: str, reserved: frozenset[str]
) -> DomainView:
    """Creates <label>.<base domain> for the tenant, with its DKIM keys."""
    domain = state.add_hosted_domain(conn, config.general.base_domain, label, tenant, reserved)
    dkimkeys.create_keys(conn, config.dkim, domain.name)
    return show_domain(conn, domain.name)


def ensure_base_domain_keys(conn: sqlite3.Connection, config: Config) -> None:
    """The base domain signs the tenants' default inboxes' replies: it needs keys too."""
    dkimkeys.create_keys(conn, config.dkim, config.general.base_domain)


def show_domain(conn: sqlite3.Connection, name: str) -> DomainView:
    domain = state.get_domain(conn, name)
    if domain is None:
        raise state.StateError(f"no domain {name!r}: see 'mxdesk domain list'")
    records = [
        DkimRecord(
            f"{k.selector}._domainkey.{k.domain}", k.selector, k.algorithm.decode(), k.dns_txt()
        )
        for k in dkimkeys.load_signing_keys(conn, domain.name)
    ]
    return DomainView(domain, records)
