"""What still refers to a tenant, domain or mailbox outside state.db: queued mail, tickets."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from mxdesk.gateway.entries import DELIVERED, INBOUND
from mxdesk.state import StateError
from mxdesk.store.status import OPEN


def _readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)


def _like_suffix(suffix: str) -> str:
    escaped = suffix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}"


def queued(
    spool: Path,
    *,
    address: str | None = None,
    domain: str | None = None,
    tenant: str | None = None,
) -> int:
    """Spool entries still there for it: inbound mail one of its addresses has not received
    yet (queued, or held after a refusal), and outbound mail sent from it (queued, deferred,
    held or being delivered). Exactly one of address, domain and tenant is given."""
    if not spool.exists():
        return 0
    if tenant is not None:
        # An inbound recipient carries the tenant it reaches, an outbound one its sender's.
        where = "r.tenant = ? AND (e.kind != ? OR r.status != ?)"
        args: tuple[str, ...] = (tenant, INBOUND, DELIVERED)
        sender = "0"
        sender_args: tuple[str, ...] = ()
    else:
        if address is not None:
            where, value = "lower(r.mailbox) = ?", address.lower()
            sender = "lower(e.mail_from) = ?"
        elif domain is not None:
            where, value = "lower(r.mailbox) LIKE ? ESCAPE '\\'", _like_suffix("@" + domain.lower())
            sender = "lower(e.mail_from) LIKE ? ESCAPE '\\'"
        else:
            raise ValueError("give an address, a domain or a tenant")
        where = f"e.kind = ? AND r.status != ? AND {where}"
        args = (INBOUND, DELIVERED, value)
        sender = f"(e.kind != ? AND {sender})"
        sender_args = (INBOUND, value)
    sql = (
        f"SELECT count(*) FROM entries e WHERE {sender} OR EXISTS"
        f" (SELECT 1 FROM recipients r WHERE r.entry = e.id AND {where})"
    )
    with closing(_readonly(spool)) as conn:
        return int(conn.execute(sql, (*sender_args, *args)).fetchone()[0])


def tickets(
    database: Path, *, tenant: str | None = None, mailbox: str | None = None
) -> tuple[int, int]:
    """(open tickets, all tickets) of a tenant or of a mailbox in tickets.db."""
    if not database.exists():
        return 0, 0
    column, value = ("tenant", tenant) if tenant is not None else ("mailbox", mailbox)
    if value is None:
        raise ValueError("give a tenant or a mailbox")
    with closing(_readonly(database)) as conn:
        row = conn.execute(
            f"SELECT count(*) FILTER (WHERE status = ?), count(*) FROM tickets WHERE {column} = ?",
            (OPEN, value.lower() if column == "mailbox" else value),
        ).fetchone()
    return int(row[0]), int(row[1])


def plural(count: int, one: str, many: str | None = None) -> str:
    """'1 message', '3 messages'."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def refuse_queued(what: str, count: int) -> None:
    """Mail the gateway said 250 for is never dropped with what it was for."""
    if count:
        raise StateError(
            f"{what} still has {plural(count, 'message')} in the queue: remove it once"
            " they are delivered, or deal with them first (see 'mxdesk queue list')"
        )
