"""The tickets database: schema, durable settings and the statements filing a message needs."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mxdesk.state import migrate

if TYPE_CHECKING:
    from sqlite_utils import Database

    from mxdesk.store.threader import KnownMessage, KnownTicket

SCHEMA = [
    """
    CREATE TABLE tickets (
        number INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        subject TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'open',
        requester TEXT NOT NULL DEFAULT '',
        flags TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE INDEX tickets_tenant ON tickets(tenant, updated);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        ticket INTEGER NOT NULL REFERENCES tickets(number),
        direction TEXT NOT NULL DEFAULT 'in' CHECK (direction IN ('in', 'out')),
        idempotency_key TEXT NOT NULL UNIQUE,
        queue_id TEXT,
        recipient TEXT NOT NULL DEFAULT '',
        message_id TEXT,
        in_reply_to TEXT,
        "references" TEXT NOT NULL DEFAULT '',
        from_addr TEXT NOT NULL DEFAULT '',
        from_name TEXT NOT NULL DEFAULT '',
        to_addrs TEXT NOT NULL DEFAULT '',
        cc_addrs TEXT NOT NULL DEFAULT '',
        date TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        text_body TEXT NOT NULL DEFAULT '',
        html_body TEXT NOT NULL DEFAULT '',
        raw BLOB NOT NULL,
        flags TEXT NOT NULL DEFAULT '',
        defects TEXT NOT NULL DEFAULT '',
        envelope_from TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL
    );
    CREATE INDEX messages_message_id ON messages(message_id);
    CREATE INDEX messages_ticket ON messages(ticket);
    CREATE TABLE attachments (
        id INTEGER PRIMARY KEY,
        message INTEGER NOT NULL REFERENCES messages(id),
        filename TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        content BLOB NOT NULL
    );
    CREATE INDEX attachments_message ON attachments(message);
    CREATE TABLE participants (
        ticket INTEGER NOT NULL REFERENCES tickets(number),
        address TEXT NOT NULL,
        role TEXT NOT NULL,
        first_seen REAL NOT NULL,
        UNIQUE (ticket, address)
    );
    """,
    # Outbound messages: written with status 'new' by `mxdesk ticket reply|new`, handed to the
    # gateway by the store daemon, then kept up to date by the gateway's delivery status notices.
    """
    ALTER TABLE messages ADD COLUMN status TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN status_detail TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN envid TEXT;
    ALTER TABLE messages ADD COLUMN operator TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN submit_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN next_submit REAL NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX messages_envid ON messages(envid);
    CREATE INDEX messages_outbox ON messages(status, next_submit);
    CREATE INDEX messages_queue_id ON messages(queue_id);
    CREATE TABLE deliveries (
        message INTEGER NOT NULL REFERENCES messages(id),
        recipient TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        detail TEXT NOT NULL DEFAULT '',
        updated REAL NOT NULL,
        PRIMARY KEY (message, recipient)
    );
    """,
    # Inbound trust: the gateway's verdicts (JSON, NULL when the message came without them),
    # the content fingerprint that recognises a message arriving again, notes for people, the
    # ticket a new ticket's subject claimed without a verified sender, and the deliveries filed
    # as duplicates of a stored message. The Message-ID index also serves the duplicate lookup.
    """
    ALTER TABLE messages ADD COLUMN verdicts TEXT;
    ALTER TABLE messages ADD COLUMN fingerprint TEXT;
    ALTER TABLE messages ADD COLUMN note TEXT NOT NULL DEFAULT '';
    ALTER TABLE tickets ADD COLUMN claims INTEGER;
    ALTER TABLE tickets ADD COLUMN note TEXT NOT NULL DEFAULT '';
    DROP INDEX messages_message_id;
    CREATE INDEX messages_message_id ON messages(message_id, fingerprint);
    CREATE TABLE duplicates (
        idempotency_key TEXT PRIMARY KEY,
        queue_id TEXT,
        message INTEGER NOT NULL REFERENCES messages(id),
        recipient TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
]

# An outbound message's status. new: waiting for the store daemon; submitting: being handed to
# the gateway; queued: in the gateway's spool; deferred: a recipient's delivery is being retried;
# sent: every recipient has it; failed: a recipient refused it for good; cancelled: stopped by a
# person; draft: kept on its ticket, never sent. Inbound messages have ''.
NEW, SUBMITTING, QUEUED, DEFERRED = "new", "submitting", "queued", "deferred"
SENT, FAILED, CANCELLED, DRAFT = "sent", "failed", "cancelled", "draft"
# A recipient's delivery: pending until the gateway reports; sent and failed are final.
PENDING = "pending"
OPEN_DELIVERY = (PENDING, DEFERRED)
MAX_DETAIL = 500


class TicketsUnavailable(Exception):
    """The tickets database cannot be opened; the message says where and why."""


def open_tickets(path: Path) -> Database:
    """Opens (creating and migrating) tickets.db for writing: WAL, and a commit is durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Customer mail: readable by the owner and its group only.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o640))
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # 250 from the store lets the gateway delete its copy: the commit must reach the disk first.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn, SCHEMA)
    from sqlite_utils import Database

    return Database(conn)


class Queryable(Protocol):
    """What reading tickets needs of a database: sqlite_utils' Database or ReadOnly."""

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]: ...


class ReadOnly:
    """tickets.db opened for reading, with sqlite_utils' query(): the CLI's reading commands
    do not load sqlite_utils (a tenth of a second of imports) to list tickets."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        cursor = self.conn.execute(sql, params or ())
        keys = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(keys, row, strict=True))

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def close(self) -> None:
        self.conn.close()


def open_readonly(path: Path) -> ReadOnly:
    """Opens tickets.db for reading only; raises TicketsUnavailable when that is not possible."""
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM tickets LIMIT 1")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise TicketsUnavailable(f"cannot read the tickets database {path}: {exc}") from None
    if version < len(SCHEMA):
        conn.close()
        raise TicketsUnavailable(
            f"the tickets database {path} has an older layout: start the store daemon once"
            " to bring it up to date"
        )
    return ReadOnly(conn)


def delivered_ticket(db: Database, key: str) -> int | None:
    """The ticket a delivery with this idempotency key was filed on (or found a duplicate on)."""
    row = db.execute(
        "SELECT ticket FROM messages WHERE idempotency_key = ?"
        " UNION ALL SELECT m.ticket FROM duplicates d JOIN messages m ON m.id = d.message"
        " WHERE d.idempotency_key = ? LIMIT 1",
        [key, key],
    ).fetchone()
    return None if row is None else int(row[0])


def known_messages(db: Database, ids: Iterable[str]) -> dict[str, list[KnownMessage]]:
    """Stored messages under the given Message-IDs, with their ticket's tenant and mailbox."""
    from mxdesk.store.threader import KnownMessage

    found: dict[str, list[KnownMessage]] = {}
    for message_id in ids:
        rows = db.query(
            "SELECT DISTINCT m.ticket, t.tenant, t.mailbox FROM messages m"
            " JOIN tickets t ON t.number = m.ticket WHERE m.message_id = ? LIMIT 20",
            [message_id],
        )
        known = [KnownMessage(int(r["ticket"]), r["tenant"], r["mailbox"]) for r in rows]
        if known:
            found[message_id] = known
    return found


def known_tickets(db: Database, numbers: Iterable[int], sender: str) -> dict[int, KnownTicket]:
    """Tenant of the given tickets (those that exist), and whether the sender takes part in
    each: the participants it gives are the sender or nobody, as a big ticket has many."""
    from mxdesk.store.threader import KnownTicket

    found = {}
    for number in numbers:
        row = db.execute(
            "SELECT tenant, EXISTS (SELECT 1 FROM participants WHERE ticket = ? AND address = ?)"
            " FROM tickets WHERE number = ?",
            [number, sender, number],
        ).fetchone()
        if row is not None:
            found[number] = KnownTicket(row[0], frozenset({sender} if row[1] else ()))
    return found


def _insert(db: Database, table: str, rows: list[dict[str, Any]], ignore: bool = False) -> int:
    """INSERT of rows (all with the keys of the first) in one statement run per row; the last
    rowid. sqlite_utils' insert asked the schema and built the statement on every call: a
    quarter of the store's filing time."""
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    sql = (
        f'INSERT {"OR IGNORE " if ignore else ""}INTO "{table}" ({names})'
        f" VALUES ({', '.join('?' * len(columns))})"
    )
    values = [[row[c] for c in columns] for row in rows]
    if len(values) == 1:
        return db.conn.execute(sql, values[0]).lastrowid or 0
    db.conn.executemany(sql, values)
    return 0


def insert_row(db: Database, table: str, row: dict[str, Any]) -> int:
    """Inserts one row and returns its rowid (the ticket number, the message id)."""
    rowid = _insert(db, table, [row])
    if not rowid:
        raise sqlite3.DatabaseError(f"insert into {table} returned no row id")
    return rowid


def insert_attachments(db: Database, rows: list[dict[str, Any]]) -> None:
    if rows:
        _insert(db, "attachments", rows)


def add_participants(
    db: Database, ticket: int, pairs: Iterable[tuple[str, str]], now: float
) -> None:
    """Adds the people not yet on the ticket; someone already there keeps their first role."""
    rows = [{"ticket": ticket, "address": a, "role": r, "first_seen": now} for a, r in pairs]
    if rows:
        _insert(db, "participants", rows, ignore=True)


def touch_ticket(db: Database, number: int, now: float) -> None:
    db.execute("UPDATE tickets SET updated = ? WHERE number = ?", [now, number])


def insert_deliveries(db: Database, message: int, recipients: Iterable[str], now: float) -> None:
    rows = [
        {"message": message, "recipient": r, "status": PENDING, "detail": "", "updated": now}
        for r in recipients
    ]
    if rows:
        _insert(db, "deliveries", rows)


def set_delivery(
    db: Database, message: int, recipient: str, status: str, detail: str, now: float
) -> bool:
    """Records one recipient's outcome; sent and failed are final, so a late or repeated
    report cannot undo them. True when the row changed."""
    cur = db.execute(
        "UPDATE deliveries SET status = ?, detail = ?, updated = ?"
        " WHERE message = ? AND recipient = ? COLLATE NOCASE AND status IN (?, ?)",
        [status, detail[:MAX_DETAIL], now, message, recipient, *OPEN_DELIVERY],
    )
    return bool(cur.rowcount)


def derived_status(current: str, deliveries: Iterable[str]) -> str:
    """A handed-over message's status from its recipients' outcomes: failed if any failed, else
    deferred if any is deferred, else sent when all are sent, else queued. A message not yet
    handed over, a draft and a cancelled message keep their status."""
    if current in (NEW, SUBMITTING, DRAFT, CANCELLED):
        return current
    found = set(deliveries)
    if FAILED in found:
        return FAILED
    if DEFERRED in found:
        return DEFERRED
    return SENT if found == {SENT} else QUEUED


def refresh_status(db: Database, message: int) -> str:
    """Sets the message's status (and its detail) from its deliveries; returns the status."""
    (row,) = db.query("SELECT status, status_detail FROM messages WHERE id = ?", [message])
    rows = list(
        db.query(
            "SELECT recipient, status, detail FROM deliveries WHERE message = ? ORDER BY rowid",
            [message],
        )
    )
    status = derived_status(row["status"], [r["status"] for r in rows])
    detail = row["status_detail"]
    if status in (FAILED, DEFERRED):
        detail = "; ".join(
            f"{r['recipient']}: {r['detail']}" for r in rows if r["status"] == status
        )
    elif status in (QUEUED, SENT):
        detail = ""
    if (status, detail) != (row["status"], row["status_detail"]):
        db.execute(
            "UPDATE messages SET status = ?, status_detail = ? WHERE id = ?",
            [status, detail[:MAX_DETAIL], message],
        )
    return status


def cancel_deliveries(db: Database, message: int, now: float) -> None:
    db.execute(
        "UPDATE deliveries SET status = ?, updated = ? WHERE message = ? AND status IN (?, ?)",
        [CANCELLED, now, message, *OPEN_DELIVERY],
    )
