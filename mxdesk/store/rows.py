"""The rows a message filed on a ticket writes: the ticket's, the message's, its attachments'."""

from __future__ import annotations

from typing import Any

from mxdesk.state import Mailbox
from mxdesk.store.duplicates import REUSED, Seen
from mxdesk.store.parse import ParsedMessage
from mxdesk.store.threader import Placement
from mxdesk.timefmt import timestamp

# Flags of a message (and, for automatic and unverified claim, of a ticket), as people read them.
AUTOMATIC = "automatic"
UNVERIFIED_SENDER = "unverified sender"
UNVERIFIED_CLAIM = "unverified claim"
MESSAGE_ID_REUSED = "message-id reused"
REPEATED_FLAG = "repeated"


def message_marks(
    msg: ParsedMessage, placement: Placement, seen: Seen | None, forged: bool
) -> tuple[str, str]:
    """(flags, note) of an inbound message: automatic; an unverified sender (one a reference
    let in who is neither on the ticket nor verified, or a From: that failed DMARC, wherever
    the message went); a Message-ID used before."""
    flags, notes = [], []
    if placement.automatic:
        flags.append(AUTOMATIC)
    if placement.unverified_sender or forged:
        flags.append(UNVERIFIED_SENDER)
    if forged:
        notes.append("the From: domain failed DMARC")
    elif placement.unverified_sender:
        notes.append("joined by its references; the sender is not on the ticket, not verified")
    if seen is not None and seen.kind == REUSED:
        flags.append(MESSAGE_ID_REUSED)
        notes.append(
            f"Message-ID {msg.message_id} was used before by message {seen.message} on ticket"
            f" #{seen.ticket} with other content"
        )
    elif seen is not None:
        flags.append(REPEATED_FLAG)
        notes.append(
            f"the same message was filed as message {seen.message} on ticket #{seen.ticket}"
            f" at {timestamp(seen.created)}, outside the duplicate window"
        )
    return ",".join(flags), "; ".join(notes)


def inbound_ticket_row(
    msg: ParsedMessage, envelope_from: str, mailbox: Mailbox, placement: Placement, now: float
) -> dict[str, Any]:
    flags = [AUTOMATIC] if placement.automatic else []
    claim = placement.claim
    if claim is not None:
        flags.append(UNVERIFIED_CLAIM)
    return {
        "tenant": mailbox.tenant,
        "mailbox": mailbox.address,
        "subject": msg.subject,
        "requester": msg.from_addr or envelope_from,
        "flags": ",".join(flags),
        "claims": claim.ticket if claim else None,
        "note": f"claims to belong to #{claim.ticket} — {claim.reason}" if claim else "",
        "created": now,
        "updated": now,
    }


def message_row(
    msg: ParsedMessage, raw: bytes, envelope_from: str, mailbox: Mailbox, flags: str, now: float
) -> dict[str, Any]:
    return {
        "direction": "in",
        "recipient": mailbox.address,
        "message_id": msg.message_id,
        "in_reply_to": msg.in_reply_to,
        "references": " ".join(msg.references),
        "from_addr": msg.from_addr,
        "from_name": msg.from_name,
        "to_addrs": ", ".join(msg.to_addrs),
        "cc_addrs": ", ".join(msg.cc_addrs),
        "date": msg.date,
        "subject": msg.subject,
        "text_body": msg.text_body,
        "html_body": msg.html_body,
        "raw": raw,
        "flags": flags,
        "defects": "\n".join(msg.defects),
        "envelope_from": envelope_from,
        "created": now,
    }


def attachment_rows(msg: ParsedMessage, message: int) -> list[dict[str, Any]]:
    return [
        {
            "message": message,
            "filename": a.filename,
            "content_type": a.content_type,
            "size": len(a.content),
            "content": a.content,
        }
        for a in msg.attachments
    ]
