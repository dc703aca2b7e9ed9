"""Recognising a message that arrives again for a tenant: its content fingerprint and the lookup."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database


# What a sender's retry, a second mailbox or a channel keeps identical: these headers and the
# body. Trace headers (Received, Authentication-Results, Return-Path, Delivered-To,
# X-Mxdesk-Queue-Id) differ per hop and per copy, so they are left out.
FINGERPRINT_HEADERS = (b"from", b"to", b"cc", b"subject", b"date")
_FOLD = re.compile(rb"\r?\n[ \t]")
_SPACE = re.compile(rb"[ \t]+")

DUPLICATE = "duplicate"  # same Message-ID and content within the window: filed once
REPEATED = "repeated"  # same Message-ID and content, older than the window: filed again
REUSED = "reused"  # same Message-ID, other content: filed, flagged


@dataclass(frozen=True)
class Seen:
    """An earlier inbound message of the tenant under the same Message-ID."""

    kind: str
    message: int
    ticket: int
    created: float


def fingerprint(raw: bytes) -> str:
    """SHA-256 over From, To, Cc, Subject and Date (unfolded, blanks collapsed) and the body
    with line endings normalised and trailing blank lines dropped."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head, _, body = text.partition(b"\n\n")
    fields: dict[bytes, bytes] = {}
    for line in _FOLD.sub(b" ", head).split(b"\n"):
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if sep and name in FINGERPRINT_HEADERS and name not in fields:
            fields[name] = _SPACE.sub(b" ", value).strip()
    digest = hashlib.sha256()
    for name in FINGERPRINT_HEADERS:
        value = fields.get(name, b"")
        digest.update(b"%s:%d:%s\n" % (name, len(value), value))
    digest.update(body.rstrip(b"\n"))
    return digest.hexdigest()


def seen_before(
    db: Database, tenant: str, message_id: str, digest: str, since: float | None
) -> Seen | None:
    """The latest copy with this Message-ID and content: a duplicate when filed at or after
    `since` (None: the window is off), else repeated; without one, any earlier message of the
    tenant under this Message-ID (reused). Both use the (message_id, fingerprint) index."""
    same = db.execute(
        "SELECT m.id, m.ticket, m.created FROM messages m JOIN tickets t ON t.number = m.ticket"
        " WHERE m.message_id = ? AND m.fingerprint = ? AND t.tenant = ?"
        " ORDER BY m.id DESC LIMIT 1",
        [message_id, digest, tenant],
    ).fetchone()
    if same is not None:
        kind = DUPLICATE if since is not None and same[2] >= since else REPEATED
        return Seen(kind, int(same[0]), int(same[1]), float(same[2]))
    # Outbound messages and those filed before fingerprints existed have none: not counted.
    other = db.execute(
        "SELECT m.id, m.ticket, m.created FROM messages m JOIN tickets t ON t.number = m.ticket"
        " WHERE m.message_id = ? AND m.fingerprint IS NOT NULL AND t.tenant = ? LIMIT 1",
        [message_id, tenant],
    ).fetchone()
    return None if other is None else Seen(REUSED, int(other[0]), int(other[1]), float(other[2]))


def record_duplicate(
    db: Database, key: str, queue_id: str | None, seen: Seen, recipient: str, now: float
) -> None:
    """Remembers the delivery that was not stored again: its idempotency key answers a
    re-delivery of it, and its queue id shows where a 250'd copy went."""
    db.execute(
        "INSERT OR IGNORE INTO duplicates (idempotency_key, queue_id, message, recipient, created)"
        " VALUES (?, ?, ?, ?, ?)",
        [key, queue_id, seen.message, recipient, now],
    )
