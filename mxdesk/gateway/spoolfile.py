"""The spool's file: the gateway's lock on it, and fsync of its directory."""

from __future__ import annotations

import fcntl
import os
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
