"""Queue control from the command line: show, cancel, hold, release and retry spool entries.

Like postsuper, it works on the spool database directly, also while the gateway runs: every
change is one SQLite transaction whose WHERE clause states the states it may start from, so it
cannot race the outbound runner's claim of an entry (the runner marks an entry `delivering` in its
own transaction before it connects anywhere).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mxdesk.gateway.entries import DELIVERING, HELD, QUEUED, SpoolEntry, read_entry

OUTBOUND = "out"


class QueueControlError(Exception):
    """The entry does not exist or is in a state that does not allow the change."""


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise QueueControlError(f"no spool at {path}: the gateway has not run yet")
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    conn.row_factory = sqlite3.Row
    return conn


def _entry(conn: sqlite3.Connection, queue_id: str, with_data: bool) -> SpoolEntry:
    row = conn.execute("SELECT * FROM entries WHERE id=?", (queue_id,)).fetchone()
    if row is None:
        raise QueueControlError(
            f"no queue entry {queue_id}: it was delivered, bounced or cancelled already"
        )
    return read_entry(conn, row, with_data)


def show(path: Path, queue_id: str) -> SpoolEntry:
    """One entry with its message, for `mxdesk queue show`."""
    conn = _connect(path)
    try:
        return _entry(conn, queue_id, with_data=True)
    finally:
        conn.close()


def _refusal(entry: SpoolEntry, action: str) -> QueueControlError:
    if entry.state == DELIVERING:
        return QueueControlError(
            f"cannot {action} {entry.id}: it is being delivered right now"
            " (see 'mxdesk queue show' for the outcome)"
        )
    return QueueControlError(f"cannot {action} {entry.id}: it is {entry.state}")


def _change(path: Path, queue_id: str, action: str, sql: str, args: tuple[object, ...]) -> None:
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            entry = _entry(conn, queue_id, with_data=False)
            changed = conn.execute(sql, args).rowcount
            if not changed:
                raise _refusal(entry, action)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def cancel(path: Path, queue_id: str) -> None:
    """Removes an outbound entry that is queued (also while it waits its send delay), deferred
    or held; an inbound entry only when held (a queued one is on its way to the store)."""
    _change(
        path,
        queue_id,
        "cancel",
        "DELETE FROM entries WHERE id=? AND (state=? OR (state=? AND kind=?))",
        (queue_id, HELD, QUEUED, OUTBOUND),
    )


def hold(path: Path, queue_id: str) -> None:
    """Keeps a queued entry from being tried until it is released."""
    _change(
        path,
        queue_id,
        "hold",
        "UPDATE entries SET state=?, last_error=? WHERE id=? AND state=?",
        (HELD, "held by an administrator", queue_id, QUEUED),
    )


def release(path: Path, queue_id: str) -> None:
    """Puts a held entry back in the queue, due at once; its age (and give-up time) is kept."""
    _change(
        path,
        queue_id,
        "release",
        "UPDATE entries SET state=?, next_attempt=? WHERE id=? AND state=?",
        (QUEUED, time.time(), queue_id, HELD),
    )


def retry(path: Path, queue_id: str) -> None:
    """Makes a queued or held entry due now (the gateway picks it up within seconds)."""
    _change(
        path,
        queue_id,
        "retry",
        "UPDATE entries SET state=?, next_attempt=? WHERE id=? AND state IN (?, ?)",
        (QUEUED, time.time(), queue_id, QUEUED, HELD),
    )


def list_entries(path: Path) -> list[SpoolEntry]:
    """All entries without their data, for `mxdesk queue list`; opens the spool read-only."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT id, kind, created, client, mail_from, size, state, attempts, next_attempt,"
            " last_error, envid, ret FROM entries ORDER BY created"
        ).fetchall()
        return [read_entry(conn, row, with_data=False) for row in rows]
    finally:
        conn.close()
