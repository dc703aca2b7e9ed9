"""Queue control from the command line: show, cancel, hold, release and retry spool entries.

Like postsuper, it works on the spool database directly, also while the gateway runs: every
change is one SQLite transaction whose WHERE clause states the states it may start from, so it
cannot race the outbound runner's claim of an entry (the runner marks an entry `delivering` in its
own transaction before it connects anywhere). The same transaction records the change, and the
Unix user who made it, in the entry's history.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import time
from pathlib import Path

from mxdesk import state
from mxdesk.gateway import history
from mxdesk.gateway.entries import (
    DELIVERING,
    HELD,
    QUEUED,
    SCHEMA,
    SHOWN_STATE,
    SpoolEntry,
    read_entry,
    with_recipients,
)

OUTBOUND = "out"


class QueueControlError(Exception):
    """The entry does not exist or is in a state that does not allow the change."""


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise QueueControlError(f"no spool at {path}: the gateway has not run yet")
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    # A spool that an older gateway made has no history table yet.
    state.migrate(conn, SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


def invoking_user() -> str:
    """Who runs the command: the Unix user, and who became it with sudo."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    by = os.environ.get("SUDO_USER", "")
    return f"{user} (sudo by {by})" if by and by != user else user


def _entry(conn: sqlite3.Connection, queue_id: str, with_data: bool) -> SpoolEntry:
    row = conn.execute("SELECT * FROM entries WHERE id=?", (queue_id,)).fetchone()
    if row is None:
        raise QueueControlError(_gone(conn, queue_id))
    return read_entry(conn, row, with_data)


def _gone(conn: sqlite3.Connection, queue_id: str) -> str:
    past = history.events(conn, queue_id)
    if not past:
        return (
            f"no queue entry {queue_id}, and none in the history of the last"
            " [gateway] history_days: check the id with 'mxdesk queue list'"
        )
    return (
        f"queue entry {queue_id} has left the spool: {history.fate(past)}"
        f" (mxdesk queue history {queue_id})"
    )


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
    if action == "cancel" and entry.kind != OUTBOUND and entry.state == QUEUED:
        # Mail the gateway said 250 for is on its way to the store: stopped first, on purpose.
        return QueueControlError(
            f"cannot cancel {entry.id}: an inbound entry is on its way to the store; hold it"
            f" first ('mxdesk queue hold {entry.id}'), then cancel it"
        )
    return QueueControlError(f"cannot {action} {entry.id}: it is {entry.state}")


def _change(
    path: Path,
    queue_id: str,
    action: str,
    sql: str,
    args: tuple[object, ...],
    event: str,
    by: str | None,
) -> None:
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            entry = _entry(conn, queue_id, with_data=False)
            # Recorded first (a cancel deletes the entry), and undone with it on a refusal.
            history.record(conn, queue_id, event, actor=by or invoking_user())
            changed = conn.execute(sql, args).rowcount
            if not changed:
                raise _refusal(entry, action)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def cancel(path: Path, queue_id: str, by: str | None = None) -> None:
    """Removes an outbound entry that is queued (also while it waits its send delay), deferred
    or held; an inbound entry only when held (a queued one is on its way to the store).
    by: who cancels, for the history (default: the Unix user running this)."""
    _change(
        path,
        queue_id,
        "cancel",
        "DELETE FROM entries WHERE id=? AND (state=? OR (state=? AND kind=?))",
        (queue_id, HELD, QUEUED, OUTBOUND),
        history.CANCELLED,
        by,
    )


def hold(path: Path, queue_id: str, by: str | None = None) -> None:
    """Keeps a queued entry from being tried until it is released."""
    _change(
        path,
        queue_id,
        "hold",
        "UPDATE entries SET state=?, last_error=? WHERE id=? AND state=?",
        (HELD, "held by an administrator", queue_id, QUEUED),
        history.HELD,
        by,
    )


def release(path: Path, queue_id: str, by: str | None = None) -> None:
    """Puts a held entry back in the queue, due at once; its age (and give-up time) is kept."""
    _change(
        path,
        queue_id,
        "release",
        # The hold's reason goes with it: `queue list` showed it on a released entry.
        "UPDATE entries SET state=?, next_attempt=?, last_error='' WHERE id=? AND state=?",
        (QUEUED, time.time(), queue_id, HELD),
        history.RELEASED,
        by,
    )


def retry(path: Path, queue_id: str, by: str | None = None) -> None:
    """Makes a queued or held entry due now (the gateway picks it up within seconds)."""
    _change(
        path,
        queue_id,
        "retry",
        "UPDATE entries SET state=?, next_attempt=? WHERE id=? AND state IN (?, ?)",
        (QUEUED, time.time(), queue_id, QUEUED, HELD),
        history.RETRIED,
        by,
    )


def entry_history(path: Path, queue_id: str) -> list[history.HistoryEvent]:
    """What happened to an entry, oldest first, also after it left the spool."""
    if not path.exists():
        raise QueueControlError(f"no spool at {path}: the gateway has not run yet")
    conn = state.connect(path, readonly=True)
    try:
        past = history.events(conn, queue_id)
    finally:
        conn.close()
    if not past:
        raise QueueControlError(
            f"no history of queue entry {queue_id}: it is older than [gateway] history_days,"
            " or the id is wrong (see 'mxdesk queue list')"
        )
    return past


def waiting(path: Path, queue_ids: list[str]) -> dict[str, str]:
    """Why each of these entries is still in the spool, for `ticket show`: "held: reason" or
    "deferred: the last error"; an entry that is simply due, being delivered or gone is left
    out. Read-only; {} when the spool cannot be read (the ticket is shown all the same)."""
    if not queue_ids or not path.exists():
        return {}
    try:
        conn = state.connect(path, readonly=True)
        try:
            rows = conn.execute(
                "SELECT id, state, attempts, last_error FROM entries WHERE id IN"
                f" ({','.join('?' * len(queue_ids))})",
                queue_ids,
            ).fetchall()
        finally:
            conn.close()
    except (sqlite3.Error, OSError):
        return {}
    found = {}
    for queue_id, entry_state, attempts, last_error in rows:
        if entry_state == HELD:
            found[queue_id] = last_error if last_error.startswith("held") else f"held: {last_error}"
        elif entry_state == QUEUED and attempts and last_error:
            found[queue_id] = f"deferred: {last_error}"
    return found


def list_entries(path: Path) -> list[SpoolEntry]:
    """Every entry without its data, oldest first; opens the spool read-only."""
    return page_entries(path)[0]


def page_entries(
    path: Path,
    *,
    kind: str | None = None,
    shown_state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[SpoolEntry], int]:
    """For `mxdesk queue list`: the entries without their data, oldest first, all of them or
    the page of limit entries after offset, of one kind (in/out) and one shown state (queued,
    deferred, delivering, held) when given; and how many entries match in all. A page costs the
    same whatever the spool holds: the entries are read in the order of an index on their
    creation, and their recipients only for the page. Opens the spool read-only."""
    if not path.exists():
        return [], 0
    where, params = ["1"], []
    if kind is not None:
        where.append("kind=?")
        params.append(kind)
    if shown_state is not None:
        where.append(f"{SHOWN_STATE}=?")
        params.append(shown_state)
    condition = " AND ".join(where)
    page = f"SELECT id FROM entries WHERE {condition} ORDER BY created LIMIT ? OFFSET ?"
    page_params = (*params, -1 if limit is None else limit, offset)
    conn = state.connect(path, readonly=True)
    try:
        conn.execute("BEGIN")  # one snapshot for the entries, their recipients and the count
        rows = conn.execute(
            "SELECT id, kind, created, client, mail_from, size, state, attempts, next_attempt,"
            f" last_error, envid, ret FROM entries WHERE {condition} ORDER BY created"
            " LIMIT ? OFFSET ?",
            page_params,
        ).fetchall()
        # The recipients of the whole page in one query (one per entry took 1.2 of the 1.7 s
        # that reading 100,000 entries needed).
        entries = with_recipients(conn, rows, page, page_params, with_data=False)
        if limit is None and offset == 0:
            return entries, len(entries)
        total = conn.execute(f"SELECT count(*) FROM entries WHERE {condition}", params)
        return entries, int(total.fetchone()[0])
    finally:
        conn.close()
