"""Lines for a person on stderr that journald also files at the right priority."""

from __future__ import annotations

import os
import sys


def stderr_is_journal() -> bool:
    """True when stderr is a stream to journald: $JOURNAL_STREAM names its device and inode
    (systemd.exec(5)); a child that inherited the variable but not the stream does not match."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def error_line(message: str) -> str:
    """A line for a person on stderr ("mxdesk: …"), an error for journald when it is there."""
    return f"{'<3>' if stderr_is_journal() else ''}mxdesk: {message}"
