"""Changing, disabling and removing one domain or one mailbox, refusing what would lose mail."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from mxdesk import domains, references, state
from mxdesk.config import Config
from mxdesk.gateway.dkimkey import DkimKeyError
from mxdesk.references import plural
from mxdesk.state import StateError, transaction

# Back from disabled, a domain is checked again at every authoritative server before it signs
# anything: its records may have changed or gone while it was off (DESIGN invariant 7).
ENABLED_STATUS = "propagating"


@dataclass(frozen=True)
class DomainRemoved:
    name: str
    # The records mxdesk had planned for it: they stay in the zone until someone removes them.
    records: list[str]


@dataclass(frozen=True)
class MailboxView:
    mailbox: state.Mailbox
    open_tickets: int
    tickets: int
    queued: int  # spool entries still on their way to or from it


def disable_domain(conn: sqlite3.Connection, name: str) -> tuple[state.Domain, bool]:
    """Stops a domain: RCPT to it answers 550, the submission refuses its senders, and replies
    signed for it wait held in the queue. Its DNS records and DKIM keys stay."""
    domain = domains.get(conn, name)
    if domain.status == "disabled":
        return domain, False
    state.set_domain(conn, domain.name, status="disabled")
    return domains.get(conn, domain.name), True


def enable_domain(conn: sqlite3.Connection, name: str) -> tuple[state.Domain, bool]:
    """A disabled domain goes back to propagating (not straight to active): the gateway checks
    its records again and makes it active once every authoritative server serves them."""
    domain = domains.get(conn, name)
    if domain.status != "disabled":
        return domain, False
    with transaction(conn):
        conn.execute(
            "UPDATE domains SET status=?, next_action=0, attempts=0, last_error='',"
            " activated=NULL, forced=0 WHERE name=? AND status='disabled'",
            (ENABLED_STATUS, domain.name),
        )
    return domains.get(conn, domain.name), True


def _record_names(conn: sqlite3.Connection, config: Config, name: str) -> list[str]:
    try:
        plan = domains.domain_plan(conn, config, name)
    except (OSError, DkimKeyError, StateError):
        return []  # the removal does not depend on reading its keys
    return sorted({f"{r.name} {r.type}" for r in plan.records})


def remove_domain(conn: sqlite3.Connection, config: Config, name: str) -> DomainRemoved:
    """Removes a domain with its DKIM keys (rows and files). Refused while it has mailboxes
    or the spool holds mail for it; its DNS records are left in the zone."""
    domain = domains.get(conn, name)
    boxes = [m.address for m in state.list_mailboxes(conn, domain.tenant)]
    boxes = [a for a in boxes if a.endswith("@" + domain.name)]
    if boxes:
        shown = ", ".join(boxes[:3]) + (", …" if len(boxes) > 3 else "")
        raise StateError(
            f"domain {domain.name} still has {plural(len(boxes), 'mailbox', 'mailboxes')}"
            f" ({shown}): remove {'it' if len(boxes) == 1 else 'them'} first"
            " (mxdesk mailbox remove ADDRESS)"
        )
    count = references.queued(config.gateway.spool_path, domain=domain.name)
    references.refuse_queued(f"domain {domain.name}", count)
    records = _record_names(conn, config, domain.name)
    domains.remove_domain(conn, config, domain.name)
    return DomainRemoved(domain.name, records)


def _mailbox(conn: sqlite3.Connection, address: str) -> state.Mailbox:
    box = state.get_mailbox(conn, address.strip())
    if box is None:
        raise StateError(f"no mailbox {address.strip()}: see 'mxdesk mailbox list'")
    return box


def show_mailbox(conn: sqlite3.Connection, config: Config, address: str) -> MailboxView:
    box = _mailbox(conn, address)
    open_tickets, all_tickets = references.tickets(config.store.database, mailbox=box.address)
    queued = references.queued(config.gateway.spool_path, address=box.address)
    return MailboxView(box, open_tickets, all_tickets, queued)


def set_mailbox(
    conn: sqlite3.Connection,
    address: str,
    *,
    name: str | None = None,
    operator_signatures: bool | None = None,
    generic_signature: bool | None = None,
) -> state.Mailbox:
    """Changes the sender name shown in From: and the signature switches (None: unchanged)."""
    changes = {
        "name": None if name is None else state.sender_name(name),
        "operator_signatures": operator_signatures,
        "generic_signature": generic_signature,
    }
    given = {k: v for k, v in changes.items() if v is not None}
    with transaction(conn):
        box = _mailbox(conn, address)
        if given:
            columns = ", ".join(f"{k}=?" for k in given)
            conn.execute(
                f"UPDATE mailboxes SET {columns} WHERE address=?", (*given.values(), box.address)
            )
    return _mailbox(conn, box.address)


def set_mailbox_status(
    conn: sqlite3.Connection, address: str, active: bool
) -> tuple[state.Mailbox, bool]:
    """Enables or disables a mailbox; a disabled one answers RCPT with 550 5.1.1 and sends no
    replies. Its tickets stay."""
    with transaction(conn):
        box = _mailbox(conn, address)
        conn.execute("UPDATE mailboxes SET active=? WHERE address=?", (int(active), box.address))
    return _mailbox(conn, box.address), box.active != active


def remove_mailbox(
    conn: sqlite3.Connection, config: Config, address: str, *, force: bool = False
) -> MailboxView:
    """Removes a mailbox. Refused for a default inbox (it goes with its tenant), while the
    spool holds mail to or from it, and, unless force, while it has open tickets. Its
    tickets stay in tickets.db."""
    view = show_mailbox(conn, config, address)
    box = view.mailbox
    if box.default_inbox:
        raise StateError(
            f"{box.address} is the default inbox of tenant {box.tenant!r}: it goes with the"
            f" tenant (mxdesk tenant remove {box.tenant}); 'mxdesk mailbox disable' stops it"
        )
    references.refuse_queued(f"mailbox {box.address}", view.queued)
    if conn.execute("SELECT 1 FROM channels WHERE address=?", (box.address,)).fetchone():
        raise StateError(
            f"channel {box.address} still reads into mailbox {box.address}: remove it first"
            f" (mxdesk channel remove {box.address})"
        )
    if view.open_tickets and not force:
        raise StateError(
            f"mailbox {box.address} has {plural(view.open_tickets, 'open ticket')}: close them"
            " first (mxdesk ticket close NUMBER), or give --force (tickets are kept)"
        )
    with transaction(conn):
        conn.execute("DELETE FROM mailboxes WHERE address=?", (box.address,))
    return view
