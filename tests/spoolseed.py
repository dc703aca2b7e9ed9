"""A spool filled behind the gateway's back, as after a long outage of the store: many inbound
entries tried and deferred, some held, a few outbound. Used by the paging test and by
bench/scale.py (100,000 entries)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mxdesk.gateway.entries import (
    INBOUND,
    SCHEMA,
    NewEntry,
    Recipient,
    insert_entry,
)
from mxdesk.state import migrate


def seed_spool(
    path: Path, count: int, mailbox: str, tenant: str = "marca", size: int = 4096
) -> list[str]:
    """Adds count entries to the spool at path (created if missing; the gateway must not be
    running) and returns their ids, oldest first. Entry i was created i ms after the first;
    every 10th (from the first) is held, every 50th (from the 6th) is outbound and deferred,
    the rest are inbound entries tried once and deferred for an hour (the store was down)."""
    body = b"x" * max(0, size - 100)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, SCHEMA)
        conn.execute("BEGIN")
        start, ids = time.time() - count / 1000 - 60, []
        for i in range(count):
            entry_id = f"{int((start + i / 1000) * 1000):011X}{i:06X}"
            kind = "out" if i % 50 == 5 else INBOUND
            rcpt = Recipient("cliente@example.com", "cliente@example.com", tenant)
            if kind == INBOUND:
                rcpt = Recipient(mailbox, mailbox, tenant)
            data = f"Subject: semeada {i}\r\nMessage-ID: <s{i}@example.com>\r\n\r\n".encode()
            insert_entry(
                conn, NewEntry(entry_id, kind, "seed", "c@example.com", (rcpt,), data + body)
            )
            if i % 10 == 0:
                conn.execute(
                    "UPDATE entries SET state='held', last_error='seeded: held' WHERE id=?",
                    (entry_id,),
                )
            else:
                conn.execute(
                    "UPDATE entries SET attempts=1, next_attempt=?, last_error=? WHERE id=?",
                    (time.time() + 3600, "451 4.3.0 the store is down", entry_id),
                )
            conn.execute("UPDATE entries SET created=? WHERE id=?", (start + i / 1000, entry_id))
            ids.append(entry_id)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return ids
