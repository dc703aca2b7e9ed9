"""A ticket's status: open or closed; closed by a person, reopened by a person or the customer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mxdesk.state import transaction
from mxdesk.store.queries import TicketNotFound

if TYPE_CHECKING:
    from sqlite_utils import Database

OPEN, CLOSED = "open", "closed"
TICKET_STATES = (OPEN, CLOSED)


def set_status(db: Database, number: int, status: str, now: float) -> bool:
    """Opens or closes ticket `number`; False when it had that status already. Its messages,
    and the replies still on their way, are not touched."""
    if status not in TICKET_STATES:
        raise ValueError(f"ticket status {status!r}")
    with transaction(db.conn):
        rows = list(db.query("SELECT status FROM tickets WHERE number = ?", [number]))
        if not rows:
            raise TicketNotFound(f"no ticket #{number}: see 'mxdesk ticket list'")
        if rows[0]["status"] == status:
            return False
        db.execute(
            "UPDATE tickets SET status = ?, updated = ? WHERE number = ?", [status, now, number]
        )
    return True


def reopen_on_message(db: Database, number: int) -> bool:
    """A customer wrote again on a closed ticket: it is open again (in the caller's
    transaction). True when it was closed."""
    cur = db.execute(
        "UPDATE tickets SET status = ? WHERE number = ? AND status = ?", [OPEN, number, CLOSED]
    )
    return bool(cur.rowcount)
