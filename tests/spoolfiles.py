"""spool.db read and written behind the gateway's back, as a crash or a bad disk leaves it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mxdesk.gateway.entries import SCHEMA, new_queue_id
from mxdesk.state import migrate


def damaged_entries(spool: Path) -> list[str]:
    """Entries without recipients or whose data is not the size recorded with them."""
    if not spool.exists():
        return []
    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT id FROM entries WHERE length(data) != size"
            " OR id NOT IN (SELECT entry FROM recipients)"
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        conn.close()


def seed_entry(
    spool: Path,
    kind: str,
    mail_from: str,
    recipients: list[tuple[str, str, str]],
    data: bytes,
    *,
    state: str = "queued",
    size: int | None = None,
) -> str:
    """Writes an entry as rows, the schema made first if need be; recipients are (mailbox,
    tenant, status). size: the size recorded, when it should differ from the data's."""
    queue_id = new_queue_id()
    conn = sqlite3.connect(spool, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, SCHEMA)
        now = time.time()
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO entries (id, kind, created, client, mail_from, size, data, state,"
            " attempts, next_attempt) VALUES (?, ?, ?, '127.0.0.1', ?, ?, ?, ?, 1, ?)",
            (queue_id, kind, now, mail_from, len(data) if size is None else size, data, state, now),
        )
        for i, (mailbox, tenant, status) in enumerate(recipients):
            reply = "" if status == "pending" else "250 2.0.0 Ok"
            conn.execute(
                "INSERT INTO recipients (entry, position, original, mailbox, tenant, status,"
                " reply) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (queue_id, i, mailbox, mailbox, tenant, status, reply),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return queue_id
