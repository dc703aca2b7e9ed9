"""The spool's file: the gateway's lock on it, fsync of its directory, and what a crash or a
bad disk left in it when the gateway starts."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path

from mxdesk.gateway import history
from mxdesk.gateway.entries import DELIVERING, HELD, QUEUED, damage
from mxdesk.startup import StartupError

log = logging.getLogger("mxdesk.gateway.spool")


def lock_spool(path: Path) -> int:
    """The spool is this process's until it ends, however it ends: claims found at start are
    dead. An flock, apart from SQLite's POSIX locks on Linux; returns its descriptor."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(
            f"the gateway spool {path} is in use by a running gateway: stop it first, or give"
            " this one its own [gateway] spool_path"
        ) from None
    return fd


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(conn: sqlite3.Connection) -> None:
    """Holds damaged entries for a person to look at; puts claimed ones back in the queue."""
    rows = conn.execute(
        "SELECT id, size, length(data),"
        " (SELECT count(*) FROM recipients WHERE entry=entries.id) FROM entries"
        " WHERE state!=?",
        (HELD,),
    ).fetchall()
    hold_damaged(conn, {r[0]: why for r in rows if (why := damage(*r[1:]))})
    # A claim dies with the process that made it: the attempt did not finish.
    stopped = "the gateway stopped during an attempt"
    history.record_where(conn, "state=?", (DELIVERING,), history.REQUEUED, stopped)
    conn.execute("UPDATE entries SET state=? WHERE state=?", (QUEUED, DELIVERING))
    count = conn.execute("SELECT count(*) FROM entries WHERE state=?", (QUEUED,)).fetchone()
    if count[0]:
        log.info("spool recovered with %d queued entries", count[0])


def hold_damaged(conn: sqlite3.Connection, reasons: dict[str, str]) -> None:
    """Holds each entry id of reasons with its reason (its data or recipients are not whole)."""
    for entry_id, reason in reasons.items():
        log.error("queue_id=%s %s: held, it will not be delivered", entry_id, reason)
        conn.execute(
            "UPDATE entries SET state=?, last_error=? WHERE id=?", (HELD, reason, entry_id)
        )
        history.record(conn, entry_id, history.HELD, reason)
