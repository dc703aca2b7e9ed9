"""Which recipients the MX accepts, and the mailbox each one reaches (never an open relay)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from mxdesk import state

R550_NO_MAILBOX = "550 5.1.1 Recipient address rejected: no such mailbox"
R550_NOT_HERE = "550 5.7.1 Recipient address rejected: not a domain hosted here, relay denied"
R550_RELAY_FORM = "550 5.7.1 Recipient address rejected: a forwarding form of address, relay denied"
R553_SYNTAX = "553 5.1.3 Recipient address rejected: bad address syntax"


@dataclass(frozen=True)
class Accept:
    """RCPT accepted: mail for `original` is delivered to `mailbox` of `tenant`."""

    original: str
    mailbox: str
    tenant: str


@dataclass(frozen=True)
class Reject:
    reply: str


def _split(address: str) -> tuple[str, str] | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.lower().rstrip(".")


def _relay_form(local: str) -> bool:
    # RFC 5321 §3.6.1 / §4.5.1: the %-hack, UUCP bang paths, quoted local parts that hide an
    # address, and source routes are forwarding requests; a helpdesk MX never relays.
    return any(c in local for c in '%!@":,') or local.startswith("@")


class RecipientPolicy:
    """Answers RCPT from the state database, which the CLI may change while the daemon runs;
    an answer is remembered until the database changes."""

    def __init__(self, conn: sqlite3.Connection, base_domain: str, postmaster_tenant: str) -> None:
        self._conn = conn
        self._base = base_domain
        self._postmaster_tenant = postmaster_tenant
        self._answers = state.Remembered(conn)

    def check(self, address: str) -> Accept | Reject:
        return self._answers.get(address, lambda: self._check(address))

    def _check(self, address: str) -> Accept | Reject:
        if address.lower() == "postmaster":
            # RFC 5321 §4.5.1: a bare <Postmaster> must be accepted.
            address = f"postmaster@{self._base}"
        parts = _split(address)
        if parts is None:
            return Reject(R553_SYNTAX)
        local, domain = parts
        if _relay_form(local) or address.startswith("@"):
            return Reject(R550_RELAY_FORM)
        local = local.lower()
        if domain == self._base:
            tenant = None
        else:
            d = state.get_domain(self._conn, domain)
            if d is None or not d.receives:
                return Reject(R550_NOT_HERE)
            tenant = d.tenant
        if local == "postmaster":
            return self._postmaster(address, tenant)
        base_local = local.split("+", 1)[0]
        # A disabled mailbox, or any address of a disabled tenant, is no mailbox to a sender.
        box = state.receiving_mailbox(self._conn, f"{base_local}@{domain}")
        if box is None:
            return Reject(R550_NO_MAILBOX)
        return Accept(address, box.address, box.tenant)

    def _postmaster(self, address: str, tenant: str | None) -> Accept | Reject:
        tenant = tenant or self._postmaster_tenant or None
        if tenant is None:
            return Reject(R550_NO_MAILBOX)
        inbox = f"{tenant}@{self._base}"
        box = state.get_mailbox(self._conn, inbox)
        if box is None:
            return Reject(R550_NO_MAILBOX)
        return Accept(address, box.address, tenant)
