"""Spool entries: the schema of spool.db, the entry types, and the SQL that writes and reads one."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mxdesk.gateway import history

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
    # What happened to each entry, kept after it left the spool (mxdesk queue history);
    # idempotent, because the CLI may bring an older spool up to date while the gateway runs.
    """
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    entry TEXT NOT NULL,
    kind TEXT NOT NULL,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    recipient TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS history_entry ON history(entry, time);
CREATE INDEX IF NOT EXISTS history_time ON history(time);
""",
    # Fetchers (mxdesk.gateway.fetch.ledger): what each channel has committed, written in the
    # same transaction as the entries themselves, so that a crash cannot separate the two.
    """
CREATE TABLE IF NOT EXISTS fetch_state (
    channel TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL DEFAULT 0,
    last_uid INTEGER NOT NULL DEFAULT 0,
    floor REAL NOT NULL DEFAULT 0,
    started REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'starting',
    status_since REAL NOT NULL DEFAULT 0,
    last_success REAL NOT NULL DEFAULT 0,
    last_fetch REAL NOT NULL DEFAULT 0,
    fetched INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    failing_since REAL NOT NULL DEFAULT 0,
    alerted TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS fetch_uidls (
    channel TEXT NOT NULL,
    uidl TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (channel, uidl)
);
CREATE TABLE IF NOT EXISTS fetch_ledger (
    channel TEXT NOT NULL,
    message TEXT NOT NULL,
    entry TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (channel, message)
);
CREATE INDEX IF NOT EXISTS fetch_ledger_time ON fetch_ledger(time);
CREATE TABLE IF NOT EXISTS fetch_owed (
    channel TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid TEXT NOT NULL,
    PRIMARY KEY (channel, uidvalidity, uid)
);
""",
    # `mxdesk queue list` pages through the spool oldest first, and status asks for the oldest
    # entry: with 100,000 entries queued that must not sort or scan them all.
    "CREATE INDEX IF NOT EXISTS entries_created ON entries(created);",
]

# queued: waiting for its next attempt; delivering: claimed by the outbound runner (so it can no
# longer be cancelled); held: needs a person (mxdesk queue release / cancel). A queued entry
# that has been tried already is shown as deferred (it is queued in the database).
RECIPIENT_COLUMNS = "original, mailbox, tenant, status, reply, notify, notified"
QUEUED, DELIVERING, HELD, DEFERRED = "queued", "delivering", "held", "deferred"
# Kinds whose entries the runner claims before delivering (they can be cancelled while queued).
INBOUND = "in"  # an entry for the store (the MX, a channel); "out" leaves for recipients
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

    @property
    def shown_state(self) -> str:
        """The state a person is shown: deferred for a queued entry tried already."""
        return DEFERRED if self.state == QUEUED and self.attempts > 0 else self.state


def damage(size: int, stored: int, recipients: int) -> str:
    """Why an entry cannot be delivered as it is ("" when it can): its data is not the size
    recorded when it was accepted, or it has no recipients. Only a disk or a hand that changed
    spool.db behind SQLite's back can do that; such an entry is held and never sent."""
    if stored != size:
        return f"damaged: {stored} of its {size} bytes in the spool"
    if recipients == 0:
        return "damaged: no recipients recorded"
    return ""


def new_queue_id() -> str:
    """Sortable and unique: milliseconds since the epoch, then 24 random bits.

    The bits only need to differ, not to be secret (a queue id is shown to the client): the
    process's Mersenne Twister, seeded from the system's entropy at start (and again in a
    forked child), instead of a getrandom() call per message, which let the spool's thread
    take the interpreter lock from the event loop for each one."""
    return f"{int(time.time() * 1000):011X}{random.getrandbits(24):06X}"


def read_entry(conn: sqlite3.Connection, row: sqlite3.Row, with_data: bool = True) -> SpoolEntry:
    """The entry of an `entries` row (any subset of columns with at least the envelope's) and
    its recipients, in the order they were given."""
    return with_recipients(conn, [row], "?", (row["id"],), with_data)[0]


def with_recipients(
    conn: sqlite3.Connection,
    rows: Sequence[sqlite3.Row],
    which: str,
    params: Sequence[object],
    with_data: bool = True,
) -> list[SpoolEntry]:
    """The entries of `entries` rows (see read_entry), with the recipients of them all read in
    one query: which is SQL giving the rows' ids (a list of marks, or a SELECT), params its
    parameters. Read in the transaction that read the rows, so that both are one snapshot."""
    recipients: dict[str, list[Recipient]] = {}
    for entry, *columns in conn.execute(
        f"SELECT entry, {RECIPIENT_COLUMNS} FROM recipients WHERE entry IN ({which})"
        " ORDER BY entry, position",
        params,
    ):
        recipients.setdefault(entry, []).append(Recipient(*columns))
    entries = []
    for row in rows:
        fields = dict(row)
        data = fields.pop("data", b"")
        entries.append(
            SpoolEntry(
                **fields,
                recipients=tuple(recipients.get(row["id"], ())),
                data=data if with_data else b"",
            )
        )
    return entries


def read_due(
    conn: sqlite3.Connection, kind: str, limit: int, exclude: frozenset[str]
) -> list[SpoolEntry]:
    """Up to limit queued entries of kind whose next attempt has come, oldest first, with
    their data; those in exclude (in flight) left out."""
    # Ids first: the entries in flight are due too, and reading their data again each time one
    # delivery ends cost more than the rest of this.
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM entries WHERE state=? AND kind=? AND next_attempt<=?"
            " ORDER BY next_attempt LIMIT ?",
            (QUEUED, kind, time.time(), limit + len(exclude)),
        )
        if r[0] not in exclude
    ][:limit]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT * FROM entries WHERE id IN ({marks})", ids).fetchall()
    by_id = {r["id"]: r for r in rows}
    return with_recipients(conn, [by_id[i] for i in ids if i in by_id], marks, ids)


def spooled(e: NewEntry, created: float, *, claimed: bool = False) -> SpoolEntry:
    """The entry insert_entry(conn, e, created) wrote, as due() would read it back."""
    return SpoolEntry(
        e.id,
        e.kind,
        created,
        e.client,
        e.mail_from,
        len(e.data),
        HELD if e.held else DELIVERING if claimed else QUEUED,
        0,
        max(created, e.not_before),
        e.held,
        tuple(e.recipients),
        e.data,
        e.envid,
        e.ret,
    )


def insert_entry(
    conn: sqlite3.Connection, e: NewEntry, now: float | None = None, *, claimed: bool = False
) -> None:
    """Adds a new entry with its recipients, and its `accepted` event to the history; now:
    its creation time (default: the time of the call)."""
    now = time.time() if now is None else now
    conn.execute(
        "INSERT INTO entries (id, kind, created, client, mail_from, size, data, next_attempt,"
        " envid, ret, state, last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            e.id,
            e.kind,
            now,
            e.client,
            e.mail_from,
            len(e.data),
            e.data,
            max(now, e.not_before),
            e.envid,
            e.ret,
            HELD if e.held else DELIVERING if claimed else QUEUED,
            e.held,
        ),
    )
    conn.executemany(
        "INSERT INTO recipients (entry, position, original, mailbox, tenant, notify)"
        " VALUES (?,?,?,?,?,?)",
        [(e.id, i, r.original, r.mailbox, r.tenant, r.notify) for i, r in enumerate(e.recipients)],
    )
    to = ",".join(f"<{r.mailbox}>" for r in e.recipients)
    sender = f"<{e.mail_from}>"
    history.record(
        conn, e.id, history.ACCEPTED, f"from {sender} to {to} ({e.client}, {len(e.data)} bytes)"
    )
    if e.held:
        history.record(conn, e.id, history.HELD, e.held)


def delivered_whole(
    conn: sqlite3.Connection, entry: SpoolEntry, results: dict[str, tuple[str, str]]
) -> bool:
    """The usual end of an attempt, every recipient pending before it and delivered by it:
    recorded and deleted as apply_results does, without writing and counting the recipients
    first. False, with nothing done, for any other outcome."""
    if len(results) != len(entry.recipients) or any(
        r.status != PENDING or results.get(r.mailbox, ("",))[0] != DELIVERED
        for r in entry.recipients
    ):
        return False
    _ended(conn, entry.id, len(results), "")
    return True


def _ended(conn: sqlite3.Connection, entry_id: str, delivered: int, bounced: str) -> None:
    """Records how an entry ended (bounced: the error, "" when every recipient got it) and
    deletes it."""
    if bounced:
        history.record(conn, entry_id, history.BOUNCED, bounced)
    else:
        to = "to its recipient" if delivered == 1 else f"to all {delivered} recipients"
        history.record(conn, entry_id, history.DELIVERED, to)
    conn.execute("DELETE FROM entries WHERE id=?", (entry_id,))


def apply_results(
    conn: sqlite3.Connection,
    entry_id: str,
    results: dict[str, tuple[str, str]],
    retry_at: float | None,
    hold: bool,
    error: str,
    drop_failed: bool,
) -> None:
    """Records an attempt's per-recipient results; deletes the entry when it is done, after
    recording how it ended (see Spool.update)."""
    for mailbox, (status, reply) in results.items():
        conn.execute(
            "UPDATE recipients SET status=?, reply=? WHERE entry=? AND mailbox=? AND status=?",
            (status, reply[:500], entry_id, mailbox, PENDING),
        )
    counts = dict(
        conn.execute(
            "SELECT status, count(*) FROM recipients WHERE entry=? GROUP BY status", (entry_id,)
        ).fetchall()
    )
    if not counts.get(PENDING) and (drop_failed or not counts.get(FAILED)):
        _ended(conn, entry_id, counts.get(DELIVERED, 0), error if counts.get(FAILED) else "")
        return
    state = HELD if hold or not counts.get(PENDING) else QUEUED
    conn.execute(
        "UPDATE entries SET state=?, attempts=attempts+1, next_attempt=?, last_error=? WHERE id=?",
        (state, retry_at or time.time(), error[:500], entry_id),
    )
    if state == HELD:
        history.record(conn, entry_id, history.HELD, error)


# The state a person is shown (SpoolEntry.shown_state), in SQL.
SHOWN_STATE = f"CASE WHEN state='{QUEUED}' AND attempts>0 THEN '{DEFERRED}' ELSE state END"
SHOWN_STATES = (QUEUED, DEFERRED, DELIVERING, HELD)


def spool_counts(conn: sqlite3.Connection) -> tuple[list[tuple[str, str, int]], float | None]:
    """(kind, shown state, entries) for every pair present, and the oldest entry's creation."""
    rows = conn.execute(
        f"SELECT kind, {SHOWN_STATE} AS shown, count(*) FROM entries"
        " GROUP BY kind, shown ORDER BY kind, shown"
    ).fetchall()
    oldest = conn.execute("SELECT min(created) FROM entries").fetchone()[0]
    return [(kind, state, n) for kind, state, n in rows], oldest
