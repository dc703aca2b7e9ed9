"""Secret material kept by the installation: the key that authenticates mxdesk's Message-IDs."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_BYTES = 32


def installation_key(state_dir: Path) -> bytes:
    """The installation's random key (<state_dir>/message-id.key, mode 0600), made once."""
    path = state_dir / "message-id.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made by another process meanwhile
            return path.read_bytes()
        try:
            key = secrets.token_bytes(KEY_BYTES)
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} is damaged: remove it to make a new one")
    return key
