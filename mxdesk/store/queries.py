"""Reading tickets for people and tools: the ticket list, and one ticket with its messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mxdesk.timefmt import timestamp

if TYPE_CHECKING:
    from mxdesk.store.db import Queryable
    from mxdesk.store.verdicts import Verdicts


class OutgoingError(Exception):
    """A reply or new ticket that cannot be made, or a message that cannot be cancelled."""


class TicketNotFound(LookupError):
    """No ticket has that number."""


class NotOutgoing(LookupError):
    """No outbound message has that id."""


@dataclass(frozen=True)
class TicketSummary:
    number: int
    tenant: str
    mailbox: str
    subject: str
    status: str
    messages: int
    # Replies not yet delivered: waiting for the store daemon, in the gateway's queue, or retrying.
    pending_replies: int
    updated: str


@dataclass(frozen=True)
class AttachmentInfo:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class DeliveryView:
    """One envelope recipient of an outbound message and what the gateway reported for it."""

    recipient: str
    status: str
    detail: str
    updated: str


@dataclass(frozen=True)
class MessageView:
    id: int
    direction: str
    from_addr: str
    from_name: str
    to: list[str]
    cc: list[str]
    date: str
    subject: str
    message_id: str | None
    queue_id: str
    text_body: str
    flags: list[str]
    defects: list[str]
    attachments: list[AttachmentInfo]
    received: str
    # Inbound only: the gateway's SPF, DKIM, DMARC and ARC verdicts (None: none were recorded)
    # and whether they prove the From: address; why the store marked the message.
    verdicts: Verdicts | None
    sender_verified: bool | None
    note: str
    # Outbound only ('' and [] for inbound): see mxdesk.store.db for the statuses.
    status: str
    status_detail: str
    operator: str
    deliveries: list[DeliveryView]


@dataclass(frozen=True)
class Participant:
    address: str
    role: str
    first_seen: str


@dataclass(frozen=True)
class TicketDetail:
    number: int
    tenant: str
    mailbox: str
    subject: str
    status: str
    requester: str
    flags: list[str]
    # A ticket opened for a [#N] tag its sender could not use: N, and the note saying why.
    claims: int | None
    note: str
    created: str
    updated: str
    messages: list[MessageView]
    participants: list[Participant]


def _split(text: str, sep: str) -> list[str]:
    return [item.strip() for item in text.split(sep) if item.strip()]


def list_tickets(
    db: Queryable, tenant: str | None = None, status: str | None = None
) -> list[TicketSummary]:
    """Tickets, most recently updated first, optionally of one tenant and with one status."""
    filters = [(c, v) for c, v in (("t.tenant", tenant), ("t.status", status)) if v]
    where = ("WHERE " + " AND ".join(f"{c} = ?" for c, _ in filters)) if filters else ""
    args = [v for _, v in filters]
    rows = db.query(
        "SELECT t.number, t.tenant, t.mailbox, t.subject, t.status, t.updated,"
        " (SELECT count(*) FROM messages m WHERE m.ticket = t.number) AS messages,"
        " (SELECT count(*) FROM messages m WHERE m.ticket = t.number"
        "   AND m.status IN ('new', 'submitting', 'queued', 'deferred')) AS pending_replies"
        f" FROM tickets t {where} ORDER BY t.updated DESC, t.number DESC",
        args,
    )
    return [TicketSummary(**r | {"updated": timestamp(r["updated"])}) for r in rows]


def get_ticket(db: Queryable, number: int) -> TicketDetail:
    """Ticket `number` with its messages (oldest first) and participants."""
    found = list(
        db.query(
            "SELECT number, tenant, mailbox, subject, status, requester, flags, claims, note,"
            " created, updated FROM tickets WHERE number = ?",
            [number],
        )
    )
    if not found:
        raise TicketNotFound(f"no ticket #{number}: see 'mxdesk ticket list'")
    t = found[0]
    messages = [
        _message(db, m)
        for m in db.query(
            "SELECT id, queue_id, direction, from_addr, from_name, to_addrs, cc_addrs, date,"
            " subject, message_id, text_body, flags, defects, created, status, status_detail,"
            " operator, verdicts, note"
            " FROM messages WHERE ticket = ? ORDER BY id",
            [number],
        )
    ]
    people = [
        Participant(p["address"], p["role"], timestamp(p["first_seen"]))
        for p in db.query(
            "SELECT address, role, first_seen FROM participants WHERE ticket = ?"
            " ORDER BY first_seen, rowid",
            [number],
        )
    ]
    return TicketDetail(
        **t
        | {
            "flags": _split(t["flags"], ","),
            "created": timestamp(t["created"]),
            "updated": timestamp(t["updated"]),
            "messages": messages,
            "participants": people,
        }
    )


def _message(db: Queryable, m: dict[str, Any]) -> MessageView:
    files = [
        AttachmentInfo(a["filename"], a["content_type"], a["size"])
        for a in db.query(
            "SELECT filename, content_type, size FROM attachments WHERE message = ? ORDER BY id",
            [m["id"]],
        )
    ]
    inbound = m["direction"] == "in"
    from mxdesk.store.verdicts import Verdicts, sender_verified

    verdicts = Verdicts.from_json(m["verdicts"])
    return MessageView(
        id=m["id"],
        direction=m["direction"],
        from_addr=m["from_addr"],
        from_name=m["from_name"],
        to=_split(m["to_addrs"], ","),
        cc=_split(m["cc_addrs"], ","),
        date=m["date"],
        subject=m["subject"],
        message_id=m["message_id"],
        queue_id=m["queue_id"] or "",
        text_body=m["text_body"],
        flags=_split(m["flags"], ","),
        defects=_split(m["defects"], "\n"),
        attachments=files,
        received=timestamp(m["created"]),
        verdicts=verdicts,
        sender_verified=sender_verified(verdicts, m["from_addr"]) if inbound else None,
        note=m["note"],
        status=m["status"],
        status_detail=m["status_detail"],
        operator=m["operator"],
        deliveries=[] if inbound else deliveries_of(db, m["id"]),
    )


def deliveries_of(db: Queryable, message: int) -> list[DeliveryView]:
    """The envelope recipients of an outbound message, in the order they were given."""
    return [
        DeliveryView(d["recipient"], d["status"], d["detail"], timestamp(d["updated"]))
        for d in db.query(
            "SELECT recipient, status, detail, updated FROM deliveries WHERE message = ?"
            " ORDER BY rowid",
            [message],
        )
    ]


@dataclass(frozen=True)
class Outgoing:
    """An outbound message as its sender sees it: its status and each recipient's."""

    id: int
    ticket: int
    status: str
    detail: str
    queue_id: str
    envid: str
    message_id: str
    operator: str
    submit_attempts: int
    deliveries: list[DeliveryView] = field(default_factory=list)


def get_outgoing(db: Queryable, message: int) -> Outgoing:
    """Outbound message `message` (its id as 'mxdesk ticket show' prints it)."""
    rows = list(
        db.query(
            "SELECT id, ticket, direction, status, status_detail, queue_id, envid, message_id,"
            " operator, submit_attempts FROM messages WHERE id = ?",
            [message],
        )
    )
    if not rows:
        raise NotOutgoing(f"no message {message}: see 'mxdesk ticket show'")
    if rows[0]["direction"] != "out":
        raise NotOutgoing(f"message {message} is an incoming message, not a reply")
    r = rows[0]
    return Outgoing(
        id=r["id"],
        ticket=r["ticket"],
        status=r["status"],
        detail=r["status_detail"],
        queue_id=r["queue_id"] or "",
        envid=r["envid"] or "",
        message_id=r["message_id"] or "",
        operator=r["operator"],
        submit_attempts=r["submit_attempts"],
        deliveries=deliveries_of(db, message),
    )
