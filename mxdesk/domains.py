"""Provisioning a domain as a whole: the state row, its DKIM keys and its record plan."""

from __future__ import annotations

import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mxdesk import dkimkeys, state
from mxdesk.config import Config
from mxdesk.dns.records import DkimTxt, RecordPlan, missing_mx_addresses, plan
from mxdesk.names import InvalidName, parse_address


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


def own_domain_name(config: Config, name: str) -> str:
    """A customer's own domain as typed, validated: not the base domain nor under it."""
    try:
        domain = parse_address(f"postmaster@{name}").domain
    except InvalidName:
        raise state.StateError(
            f"{name!r} is not a domain name: use a-z, 0-9, '-' and dots, e.g. marca.com.br"
        ) from None
    base = config.general.base_domain
    if domain == base or domain.endswith("." + base):
        raise state.StateError(
            f"{domain} is under {base}: add it as a hosted subdomain (without --own)"
        )
    return domain


def add_domain(
    conn: sqlite3.Connection,
    config: Config,
    name: str,
    tenant: str,
    reserved: frozenset[str],
    *,
    own: bool = False,
) -> DomainView:
    """Creates a pending domain with its DKIM keys: LABEL.<base domain>, or with own the
    customer's domain NAME and the token that proves it is theirs."""
    if own:
        domain = state.add_domain(
            conn, own_domain_name(config, name), tenant, "own", secrets.token_hex(16)
        )
    else:
        label = name.removesuffix("." + config.general.base_domain)
        full = state.hosted_name(config.general.base_domain, label, reserved)
        domain = state.add_domain(conn, full, tenant, "hosted")
    try:
        dkimkeys.create_keys(conn, config.dkim, domain.name)
    except BaseException:
        remove_domain(conn, config, domain.name)
        raise
    return show_domain(conn, domain.name)


def remove_domain(conn: sqlite3.Connection, config: Config, name: str) -> None:
    """Deletes a domain and its keys (used when adding it failed half-way)."""
    for key in dkimkeys.keys_of(conn, name):
        Path(key.path).unlink(missing_ok=True)
    with state.transaction(conn):
        conn.execute("DELETE FROM dkim_keys WHERE domain=?", (name,))
        conn.execute("DELETE FROM domains WHERE name=?", (name,))
    shutil.rmtree(config.dkim.keys_dir / name, ignore_errors=True)


def ensure_base_domain_keys(conn: sqlite3.Connection, config: Config) -> None:
    """The base domain signs the tenants' default inboxes' replies: it needs keys too."""
    dkimkeys.create_keys(conn, config.dkim, config.general.base_domain)


def show_domain(conn: sqlite3.Connection, name: str) -> DomainView:
    domain = get(conn, name)
    records = [
        DkimRecord(
            f"{k.selector}._domainkey.{k.domain}", k.selector, k.algorithm.decode(), k.dns_txt()
        )
        for k in dkimkeys.load_signing_keys(conn, domain.name)
    ]
    return DomainView(domain, records)


def get(conn: sqlite3.Connection, name: str) -> state.Domain:
    domain = state.get_domain(conn, name.lower().rstrip("."))
    if domain is None:
        raise state.StateError(f"no domain {name!r}: see 'mxdesk domain list'")
    return domain


def _dkim_txts(conn: sqlite3.Connection, name: str) -> list[DkimTxt]:
    return [DkimTxt(k.selector, k.dns_txt()) for k in dkimkeys.load_signing_keys(conn, name)]


def domain_plan(conn: sqlite3.Connection, config: Config, name: str) -> RecordPlan:
    """The records a domain of a tenant needs (with its ownership proof when it is own)."""
    domain = get(conn, name)
    return plan(domain.name, config.dns, _dkim_txts(conn, domain.name), token=domain.token)


def base_plan(conn: sqlite3.Connection, config: Config) -> RecordPlan:
    """The base domain's records: its default inboxes send and receive, plus the addresses
    of the MX hosts inside it."""
    base = config.general.base_domain
    missing = missing_mx_addresses(config.dns, base)
    if missing:
        raise state.StateError(
            f"MX host {missing[0]} is inside {base}: give its addresses in [dns] mx_addresses"
            f' (e.g. "{missing[0]}" = ["192.0.2.10", "2001:db8::10"])'
        )
    return plan(base, config.dns, _dkim_txts(conn, base), base=True)
