"""The spool's file: the gateway's lock on it, fsync of its directory, and taking its write
lock from other processes."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path

from mxdesk.startup import StartupError


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


# How long a transaction waits for another process's (a listener process's, the CLI's) to end:
# the connection's own busy timeout.
BUSY_SECONDS = 5.0


def begin_immediate(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for another process's write transaction in steps of 0.1 to
    2 ms. SQLite's busy handler sleeps 1, 2, 5, 10, ... ms between tries: with listener
    processes committing to the same spool, a collision idled the thread (and every commit
    queued behind it) for several times the few hundred microseconds the other one took.
    Raises sqlite3.OperationalError ("database is locked") after BUSY_SECONDS."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        delay, deadline = 0.0001, time.monotonic() + BUSY_SECONDS
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
