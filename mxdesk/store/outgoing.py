"""Outbound messages: replies and new tickets written for the gateway, and cancelling them."""

from __future__ import annotations

import mimetypes
import secrets
import sqlite3
import string
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxdesk import operators, state
from mxdesk.config import GatewayConfig
from mxdesk.names import InvalidName, parse_address
from mxdesk.state import Mailbox, StateError, transaction
from mxdesk.store import db as tickets_db
from mxdesk.store.compose import ReplyDraft, compose_reply
from mxdesk.store.db import CANCELLED, DEFERRED, DRAFT, FAILED, NEW, QUEUED, SENT, SUBMITTING
from mxdesk.store.parse import MAX_SUBJECT, Attachment, parse_message
from mxdesk.store.queries import Outgoing, OutgoingError, TicketNotFound, get_outgoing
from mxdesk.store.rows import attachment_rows, message_row

if TYPE_CHECKING:
    from sqlite_utils import Database

# Upper case and digits only: aiosmtpd upper-cases MAIL parameters, and an RFC 3461 ENVID is
# xtext, so this survives any SMTP server unchanged. 24 characters of 36 are 124 bits.
ENVID_ALPHABET = string.ascii_uppercase + string.digits
ENVID_LENGTH = 24

_REFUSED = {
    SUBMITTING: "message {id} is being handed to the gateway; try again in a moment",
    SENT: "message {id} was already sent",
    FAILED: "message {id} has already failed: there is nothing to cancel",
    CANCELLED: "message {id} was already cancelled",
    DRAFT: "message {id} is a draft: it is never sent, there is nothing to cancel",
}


@dataclass(frozen=True)
class Limits:
    """What the gateway accepts: the composed message's size and its envelope recipients."""

    max_size: int = GatewayConfig.max_message_size
    max_recipients: int = GatewayConfig.max_recipients


@dataclass(frozen=True)
class ReplyRequest:
    ticket: int
    operator: str
    body: str
    cc: Sequence[str] = ()
    attachments: Sequence[Attachment] = ()


@dataclass(frozen=True)
class NewTicketRequest:
    """A ticket opened by an operator. send=False keeps the first message as a draft that is
    never handed to the gateway."""

    tenant: str
    mailbox: str
    to: Sequence[str]
    subject: str
    body: str
    cc: Sequence[str] = ()
    operator: str | None = None
    attachments: Sequence[Attachment] = ()
    send: bool = True


@dataclass(frozen=True)
class _Sender:
    mailbox: Mailbox
    signature: str
    operator: str


def new_envid() -> str:
    return "".join(secrets.choice(ENVID_ALPHABET) for _ in range(ENVID_LENGTH))


def attachment_from_path(path: Path) -> Attachment:
    """A file to attach: its base name, and a content type guessed from the name."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise OutgoingError(f"cannot read {path}: {exc.strerror}") from None
    guessed, encoding = mimetypes.guess_type(path.name)
    # foo.tar.gz guesses tar with gzip encoding: the bytes are gzip, not tar.
    ctype = "application/octet-stream" if guessed is None or encoding else guessed
    return Attachment(path.name, ctype, content)


def create_reply(
    db: Database,
    conn: sqlite3.Connection,
    key: bytes,
    request: ReplyRequest,
    limits: Limits = Limits(),
    now: float | None = None,
) -> Outgoing:
    """Stores an operator's reply to the ticket's requester, status 'new'."""
    now = time.time() if now is None else now
    body = _body(request.body)
    cc = _addresses(request.cc, "cc")
    ticket = _ticket(db, request.ticket)
    to = _addresses([ticket["requester"]], f"ticket #{request.ticket}: the requester")
    sender = _sender(conn, ticket["tenant"], ticket["mailbox"], request.operator)
    answered = _answered(db, request.ticket)
    draft = replace(
        _draft(sender, to, cc, ticket["subject"], body, request.attachments),
        ticket=request.ticket,
        in_reply_to=answered.get("message_id"),
        references=str(answered.get("references") or "").split(),
    )
    with transaction(db.conn):
        out = _store(db, key, draft, sender, limits, NEW, now)
        tickets_db.add_participants(db, request.ticket, [(a, "cc") for a in cc], now)
        tickets_db.touch_ticket(db, request.ticket, now)
    return out


def create_ticket(
    db: Database,
    conn: sqlite3.Connection,
    key: bytes,
    request: NewTicketRequest,
    limits: Limits = Limits(),
    now: float | None = None,
) -> Outgoing:
    """Opens a ticket with a first message from the mailbox: status 'new', or 'draft' when
    the request says not to send it."""
    now = time.time() if now is None else now
    subject = " ".join(request.subject.split())
    if not subject:
        raise OutgoingError("a new ticket needs a subject (--subject)")
    if len(subject) > MAX_SUBJECT:
        raise OutgoingError(f"the subject is {len(subject)} characters long: at most {MAX_SUBJECT}")
    body = _body(request.body)
    to = _addresses(request.to, "to")
    if not to:
        raise OutgoingError("a new ticket needs a recipient (--to)")
    cc = _addresses(request.cc, "cc")
    try:
        state.get_tenant(conn, request.tenant)
    except StateError as exc:
        raise OutgoingError(str(exc)) from None
    sender = _sender(conn, request.tenant, request.mailbox, request.operator)
    people = [(to[0], "requester"), *((a, "to") for a in to[1:]), *((a, "cc") for a in cc)]
    draft = _draft(sender, to, cc, subject, body, request.attachments)
    status = NEW if request.send else DRAFT
    with transaction(db.conn):
        row = _ticket_row(request.tenant, sender, subject, to[0], now)
        number = tickets_db.insert_row(db, "tickets", row)
        draft = replace(draft, ticket=number)  # the Message-ID names the ticket
        out = _store(db, key, draft, sender, limits, status, now, first=True)
        tickets_db.add_participants(db, number, people, now)
    return out


def cancel(db: Database, spool_path: Path, message: int) -> Outgoing:
    """Stops a message: at once while the store daemon has not handed it over, else by
    removing it from the gateway's queue (mxdesk.gateway.queuectl) while it waits there."""
    out = get_outgoing(db, message)
    if out.status == NEW:
        if _mark_cancelled(db, message, "cancelled before it was handed to the gateway", (NEW,)):
            return get_outgoing(db, message)
        out = get_outgoing(db, message)  # the store daemon claimed it meanwhile
    if out.status in (QUEUED, DEFERRED):
        # Imported here: the store needs the gateway's code only to cancel a queued message.
        from mxdesk.gateway import queuectl

        try:
            queuectl.cancel(spool_path, out.queue_id)
        except queuectl.QueueControlError as exc:
            raise OutgoingError(f"message {message}: {exc}") from None
        _mark_cancelled(db, message, "removed from the gateway's queue")
        return get_outgoing(db, message)
    refusal = _REFUSED.get(out.status, "message {id} cannot be cancelled")
    raise OutgoingError(refusal.format(id=message))


def mark_cancelled_by_queue_id(db: Database, queue_id: str) -> int | None:
    """Records that the gateway's queue entry `queue_id` was cancelled: the reply it carried
    (its id is returned) is marked cancelled. None when no reply has that queue id."""
    for row in db.query(
        "SELECT id FROM messages WHERE queue_id = ? AND direction = 'out'", [queue_id]
    ):
        _mark_cancelled(db, int(row["id"]), "removed from the gateway's queue")
        return int(row["id"])
    return None


def _mark_cancelled(
    db: Database, message: int, detail: str, since: Sequence[str] = (QUEUED, DEFERRED, FAILED)
) -> bool:
    """Cancels the message when its status is one of `since`, atomically; True when it did."""
    marks = ",".join("?" * len(since))
    with transaction(db.conn):
        changed = db.execute(
            "UPDATE messages SET status = ?, status_detail = ?"
            f" WHERE id = ? AND status IN ({marks})",
            [CANCELLED, detail, message, *since],
        ).rowcount
        if changed:
            tickets_db.cancel_deliveries(db, message, time.time())
    return bool(changed)


def _store(
    db: Database,
    key: bytes,
    draft: ReplyDraft,
    sender: _Sender,
    limits: Limits,
    status: str,
    now: float,
    first: bool = False,
) -> Outgoing:
    recipients = list(dict.fromkeys([*draft.to, *draft.cc]))
    if len(recipients) > limits.max_recipients:
        raise OutgoingError(
            f"{len(recipients)} recipients: the gateway takes at most {limits.max_recipients}"
        )
    msg = compose_reply(draft, key, now)
    if first:
        msg.replace_header("Subject", draft.subject)  # it opens the conversation: no "Re:"
    raw = msg.as_bytes()
    if len(raw) > limits.max_size:
        raise OutgoingError(
            f"the message is {len(raw)} bytes with its attachments:"
            f" the gateway accepts at most {limits.max_size}"
        )
    parsed = parse_message(raw)
    envid = new_envid()
    row: dict[str, Any] = message_row(parsed, raw, sender.mailbox.address, sender.mailbox, "", now)
    row |= {
        "direction": "out",
        "ticket": draft.ticket,
        "idempotency_key": f"out:{envid}",
        "status": status,
        "envid": envid,
        "operator": sender.operator,
        "next_submit": now,
    }
    message = tickets_db.insert_row(db, "messages", row)
    tickets_db.insert_attachments(db, attachment_rows(parsed, message))
    if status == NEW:
        tickets_db.insert_deliveries(db, message, recipients, now)
    return get_outgoing(db, message)


def _draft(
    sender: _Sender,
    to: list[str],
    cc: list[str],
    subject: str,
    body: str,
    attachments: Sequence[Attachment],
) -> ReplyDraft:
    return ReplyDraft(
        ticket=0,
        mailbox=sender.mailbox.address,
        sender_name=sender.mailbox.name,
        to=to,
        cc=cc,
        subject=subject,
        body=body,
        signature=sender.signature,
        attachments=list(attachments),
    )


def _body(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise OutgoingError("the message has no text: give it in a file or on standard input")
    if any(ord(c) < 32 and c not in "\n\t\f" for c in text):
        raise OutgoingError("the message text has control characters: give plain UTF-8 text")
    return text


def _addresses(values: Iterable[str], what: str) -> list[str]:
    found: list[str] = []
    for value in values:
        try:
            address = str(parse_address(value))
        except InvalidName as exc:
            raise OutgoingError(f"{what}: {exc}") from None
        if address not in found:
            found.append(address)
    return found


def _ticket(db: Database, number: int) -> dict[str, Any]:
    for row in db.query(
        "SELECT tenant, mailbox, subject, requester FROM tickets WHERE number = ?", [number]
    ):
        return dict(row)
    raise TicketNotFound(f"no ticket #{number}: see 'mxdesk ticket list'")


def _answered(db: Database, ticket: int) -> dict[str, Any]:
    """The message a reply answers: the newest incoming one a person wrote (a bounce's
    Message-ID means nothing to the customer), else the newest incoming one."""
    for row in db.query(
        "SELECT message_id, \"references\" FROM messages WHERE ticket = ? AND direction = 'in'"
        " AND message_id IS NOT NULL ORDER BY instr(flags, 'automatic') > 0, id DESC LIMIT 1",
        [ticket],
    ):
        return dict(row)
    return {}


def _sender(conn: sqlite3.Connection, tenant: str, address: str, operator: str | None) -> _Sender:
    box = state.get_mailbox(conn, address)
    if box is None or box.tenant != tenant:
        raise OutgoingError(
            f"{address} is not a mailbox of tenant {tenant!r}: see 'mxdesk mailbox list'"
        )
    if not box.active:
        raise OutgoingError(f"mailbox {box.address} is disabled: enable it to send from it")
    own = ""
    if operator is not None:
        try:
            own = operators.get_operator(conn, tenant, operator).signature
        except StateError as exc:
            raise OutgoingError(str(exc)) from None
    generic = operators.generic_signature(conn, tenant)
    signature = operators.signature_for(
        own, generic, box.operator_signatures, box.generic_signature
    )
    return _Sender(box, signature, operator or "")


def _ticket_row(
    tenant: str, sender: _Sender, subject: str, requester: str, now: float
) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "mailbox": sender.mailbox.address,
        "subject": subject,
        "requester": requester,
        "flags": "",
        "created": now,
        "updated": now,
    }
