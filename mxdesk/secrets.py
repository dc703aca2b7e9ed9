"""Secret material kept by the installation: the key that authenticates mxdesk's Message-IDs."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

KEY_BYTES = 32
_NOTICE = re.compile(r"^<n\.([0-9A-Za-z]{1,40})\.([0-9a-f]{24})@[^>]+>$")


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


def notice_message_id(key: bytes, queue_id: str, host_name: str) -> str:
    """The Message-ID of a delivery status notice the gateway makes: <n.<queue id>.<mac>@host>.
    The MAC under the installation key lets the store trust the notice's status fields."""
    mac = hmac.new(key, f"notice.{queue_id}".encode(), hashlib.sha256).hexdigest()[:24]
    return f"<n.{queue_id}.{mac}@{host_name}>"


def is_notice_message_id(key: bytes, message_id: str) -> bool:
    """True when message_id was made by notice_message_id under this key."""
    match = _NOTICE.match(message_id.strip())
    if match is None:
        return False
    expected = hmac.new(key, f"notice.{match[1]}".encode(), hashlib.sha256).hexdigest()[:24]
    return hmac.compare_digest(match[2], expected)
