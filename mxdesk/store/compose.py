"""Composing an operator's reply: headers that thread, a text and an HTML part, attachments."""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from mxdesk.store.parse import Attachment

_OURS = re.compile(r"^<?t(\d{1,12})\.([0-9a-f]{12})\.([0-9a-f]{20})@([^>]+)>?$")
_RE = re.compile(r"^\s*(re|res|aw|sv)\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class ReplyDraft:
    ticket: int
    mailbox: str
    sender_name: str
    to: list[str]
    subject: str
    body: str
    signature: str = ""
    cc: list[str] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)


def _mac(key: bytes, ticket: int, nonce: str) -> str:
    return hmac.new(key, f"{ticket}.{nonce}".encode(), hashlib.sha256).hexdigest()[:20]


def make_message_id(key: bytes, ticket: int, domain: str) -> str:
    """<t<ticket>.<nonce>.<mac>@domain>: names its ticket, and the MAC proves mxdesk made it."""
    nonce = secrets.token_hex(6)
    return f"<t{ticket}.{nonce}.{_mac(key, ticket, nonce)}@{domain}>"


def ticket_of_message_id(key: bytes, message_id: str) -> int | None:
    """The ticket an mxdesk Message-ID names, when its MAC is right; None for any other id."""
    match = _OURS.match(message_id.strip())
    if match is None:
        return None
    ticket, nonce, mac = int(match[1]), match[2], match[3]
    return ticket if hmac.compare_digest(mac, _mac(key, ticket, nonce)) else None


def reply_subject(subject: str) -> str:
    """'Re: ' once in front; a ticket tag such as [#12] is kept as it is."""
    subject = " ".join(subject.split())
    return subject if _RE.match(subject) else f"Re: {subject}"


def _html(body: str, signature: str) -> str:
    def para(text: str) -> str:
        return html.escape(text).replace("\n", "<br>\n")

    sig = f'\n<div class="signature">{para(signature)}</div>' if signature else ""
    return f"<!DOCTYPE html>\n<html><body>\n<div>{para(body)}</div>{sig}\n</body></html>\n"


def without_separator(signature: str) -> str:
    """A signature without the "-- " line its author may have typed: the message adds one."""
    lines = signature.strip("\n").split("\n")
    if lines and lines[0].rstrip() == "--":
        lines = lines[1:]
    return "\n".join(lines).strip("\n")


def compose_reply(draft: ReplyDraft, key: bytes, now: float | None = None) -> EmailMessage:
    """The reply as a MIME message; its Message-ID carries the ticket and a MAC."""
    local, _, domain = draft.mailbox.partition("@")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(draft.sender_name, local, domain)
    msg["To"] = ", ".join(draft.to)
    if draft.cc:
        msg["Cc"] = ", ".join(draft.cc)
    msg["Subject"] = reply_subject(draft.subject)
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC).astimezone()
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = make_message_id(key, draft.ticket, domain)
    if draft.in_reply_to:
        msg["In-Reply-To"] = draft.in_reply_to
        refs = [r for r in draft.references if r != draft.in_reply_to][-20:]
        msg["References"] = " ".join([*refs, draft.in_reply_to])
    text = draft.body.rstrip("\n") + "\n"
    signature = without_separator(draft.signature)
    if signature:
        text += "\n-- \n" + signature + "\n"  # the signature separator of RFC 3676 §4.3
    msg.set_content(text, charset="utf-8")
    msg.add_alternative(_html(draft.body.rstrip("\n"), signature), subtype="html", charset="utf-8")
    for a in draft.attachments:
        maintype, _, subtype = a.content_type.partition("/")
        msg.add_attachment(
            a.content,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=a.filename,
        )
    return msg
