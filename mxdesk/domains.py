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
    state: str = "active"


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
    delegated = False
    if own:
        domain = state.add_domain(
            conn, own_domain_name(config, name), tenant, "own", secrets.token_hex(16)
        )
        delegated = bool(config.dns.dkim_zone)
        if delegated:
            clash = _delegation_clash(conn, domain.name)
            if clash:
                remove_domain(conn, config, domain.name)
                raise state.StateError(
                    f"{domain.name} and {clash} would share the label"
                    f" {dkimkeys.delegation_label(clash)} in {config.dns.dkim_zone}"
                )
            state.set_domain(conn, domain.name, dkim_delegated=True)
    else:
        label = name.removesuffix("." + config.general.base_domain)
        full = state.hosted_name(config.general.base_domain, label, reserved)
        domain = state.add_domain(conn, full, tenant, "hosted")
    try:
        dkimkeys.create_keys(conn, config.dkim, domain.name, delegated=delegated)
    except BaseException:
        remove_domain(conn, config, domain.name)
        raise
    return show_domain(conn, domain.name, config)


def _delegation_clash(conn: sqlite3.Connection, name: str) -> str:
    """Another delegated domain whose keys would live under the same label, or ""."""
    label = dkimkeys.delegation_label(name)
    rows = conn.execute("SELECT name FROM domains WHERE dkim_delegated=1 AND name!=?", (name,))
    return next((r["name"] for r in rows if dkimkeys.delegation_label(r["name"]) == label), "")


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


def show_domain(conn: sqlite3.Connection, name: str, config: Config | None = None) -> DomainView:
    domain = get(conn, name)
    under = delegation_zone(config, domain) if config is not None else ""
    records = [
        DkimRecord(
            f"{k.selector}._domainkey.{under or k.domain}", k.selector, k.algorithm, txt, k.state
        )
        for k, txt in published_keys(conn, domain.name)
    ]
    return DomainView(domain, records)


def published_keys(conn: sqlite3.Connection, name: str) -> list[tuple[dkimkeys.KeyRecord, str]]:
    """The keys whose records a domain publishes, with their TXT values."""
    return [(k, dkimkeys.record_txt(k)) for k in dkimkeys.keys_of(conn, name, dkimkeys.PUBLISHED)]


def get(conn: sqlite3.Connection, name: str) -> state.Domain:
    domain = state.get_domain(conn, name.lower().rstrip("."))
    if domain is None:
        raise state.StateError(f"no domain {name!r}: see 'mxdesk domain list'")
    return domain


def delegation_zone(config: Config, domain: state.Domain) -> str:
    """Where a delegated domain's keys live (<label>.<dkim zone>); "" when it is not."""
    if not domain.dkim_delegated or not config.dns.dkim_zone:
        return ""
    return f"{dkimkeys.delegation_label(domain.name)}.{config.dns.dkim_zone}"


def _dkim_txts(conn: sqlite3.Connection, name: str, under: str = "") -> list[DkimTxt]:
    return [
        DkimTxt(k.selector, txt, f"{k.selector}._domainkey.{under}" if under else "")
        for k, txt in published_keys(conn, name)
    ]


def dkim_cnames(
    conn: sqlite3.Connection, config: Config, domain: state.Domain
) -> list[tuple[str, str]]:
    """A delegated domain's CNAMEs: every slot (and each key outside the slots) ->
    the same selector under its label in the DKIM zone."""
    under = delegation_zone(config, domain)
    if not under:
        return []
    suffixes = ["", "e"] if config.dkim.ed25519 else [""]
    selectors = {slot + e for slot in dkimkeys.SLOTS for e in suffixes}
    selectors |= {k.selector for k in dkimkeys.keys_of(conn, domain.name)}
    return [(f"{s}._domainkey.{domain.name}", f"{s}._domainkey.{under}") for s in sorted(selectors)]


def domain_plan(conn: sqlite3.Connection, config: Config, name: str) -> RecordPlan:
    """The records a domain needs: a tenant's (with its ownership proof when it is own, and
    its DKIM CNAMEs when delegated) or the base domain's."""
    if name == config.general.base_domain:
        return base_plan(conn, config)
    domain = get(conn, name)
    under = delegation_zone(config, domain)
    return plan(
        domain.name,
        config.dns,
        _dkim_txts(conn, domain.name, under),
        token=domain.token,
        dkim_cnames=dkim_cnames(conn, config, domain),
    )


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
