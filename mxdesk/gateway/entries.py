"""Spool entries: the schema of spool.db, the entry types, and reading an entry back."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    client TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS entries_due ON entries(state, next_attempt);
CREATE TABLE IF NOT EXISTS recipients (
    entry TEXT NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    original TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (entry, position)
);
""",
    # Delivery status notifications (RFC 3461): the submitter's envelope id and RET, and each
    # recipient's NOTIFY; `notified` remembers that a delay notice went out already.
    """
ALTER TABLE entries ADD COLUMN envid TEXT NOT NULL DEFAULT '';
ALTER TABLE entries ADD COLUMN ret TEXT NOT NULL DEFAULT '';
ALTER TABLE recipients ADD COLUMN notify TEXT NOT NULL DEFAULT '';
ALTER TABLE recipients ADD COLUMN notified TEXT NOT NULL DEFAULT '';
""",
]

# queued: waiting for its next attempt; delivering: claimed by the outbound runner (so it can no
# longer be cancelled); held: needs a person (mxdesk queue release / cancel).
RECIPIENT_COLUMNS = "original, mailbox, tenant, status, reply, notify, notified"
QUEUED, DELIVERING, HELD = "queued", "delivering", "held"
# Kinds whose entries the runner claims before delivering (they can be cancelled while queued).
CLAIMED_KINDS = frozenset({"out"})
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient. Inbound: mailbox is the hosted mailbox it reaches. Outbound:
    mailbox is the remote address (domain lower-cased) and tenant the sender's tenant."""

    original: str
    mailbox: str
    tenant: str
    status: str = PENDING
    reply: str = ""
    notify: str = ""  # RFC 3461 NOTIFY: "" (default: FAILURE), "NEVER" or e.g. "SUCCESS,FAILURE"
    notified: str = ""


@dataclass(frozen=True)
class NewEntry:
    id: str
    kind: str
    client: str
    mail_from: str
    recipients: Sequence[Recipient]
    data: bytes
    envid: str = ""
    ret: str = ""
    not_before: float = 0.0  # the first attempt waits until then (the outbound send delay)
    held: str = ""  # committed held with this reason (a reply whose domain is not active yet)


@dataclass(frozen=True)
class SpoolEntry:
    id: str
    kind: str
    created: float
    client: str
    mail_from: str
    size: int
    state: str
    attempts: int
    next_attempt: float
    last_error: str
    recipients: tuple[Recipient, ...]
    data: bytes = field(default=b"", repr=False)
    envid: str = ""
    ret: str = ""

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == PENDING]


def new_queue_id() -> str:
    """Sortable and unique: milliseconds since the epoch, then 24 random bits."""
    return f"{int(time.time() * 1000):011X}{secrets.token_hex(3).upper()}"


def read_entry(conn: sqlite3.Connection, row: sqlite3.Row, with_data: bool = True) -> SpoolEntry:
    """The entry of an `entries` row (any subset of columns with at least the envelope's) and
    its recipients, in the order they were given."""
    rcpts = conn.execute(
        f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE entry=? ORDER BY position",
        (row["id"],),
    ).fetchall()
    fields = dict(row)
    data = fields.pop("data", b"")
    recipients = tuple(Recipient(*r) for r in rcpts)
    return SpoolEntry(**fields, recipients=recipients, data=data if with_data else b"")
