"""Filing a delivered message on a ticket: idempotency, threading and one durable commit."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from mxdesk.state import Mailbox, transaction
from mxdesk.store import db as tickets_db
from mxdesk.store.compose import ticket_of_message_id
from mxdesk.store.notices import Applied, Notice, apply_notice, read_notice
from mxdesk.store.parse import ParsedMessage, parse_message, queue_id_of
from mxdesk.store.status import reopen_on_message
from mxdesk.store.threader import (
    Placement,
    ThreadFacts,
    is_automatic,
    participants_of,
    place,
    referenced_ids,
    subject_tags,
)

log = logging.getLogger("mxdesk.store")


@dataclass(frozen=True)
class Filed:
    """One recipient's copy is on a ticket (now, or already by an earlier delivery)."""

    queue_id: str
    ticket: int
    duplicate: bool


def delivery_id(raw: bytes) -> tuple[str, str]:
    """(queue id for replies and logs, idempotency key prefix): the gateway's queue id from the
    first header line, else the SHA-256 of the bytes (another LMTP client)."""
    queue_id = queue_id_of(raw)
    if queue_id is None:
        digest = hashlib.sha256(raw).hexdigest()
        return digest[:16], digest
    return queue_id, queue_id


class TicketStore:
    """Files messages in tickets.db; one writer at a time, callable from worker threads."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        message_id_key: bytes | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.message_id_key = message_id_key
        self._lock = threading.Lock()

    def file_all(
        self, raw: bytes, envelope_from: str, mailboxes: Sequence[Mailbox]
    ) -> list[Filed | None]:
        """Files one copy per recipient mailbox; None where a temporary error stopped it."""
        parsed: ParsedMessage | None = None
        results: list[Filed | None] = []
        queue_id, prefix = delivery_id(raw)
        notice = None
        # The gateway sends its notices from the null sender (RFC 3464 §2): a cheap first test.
        if self.message_id_key is not None and envelope_from == "":
            notice = read_notice(raw, self.message_id_key)
        for mailbox in mailboxes:
            key = f"{prefix}:{mailbox.address}"
            try:
                with self._lock:
                    ticket = tickets_db.delivered_ticket(self.db, key)
                if ticket is None:
                    parsed = parsed or parse_message(raw)
                    filed = self._file(raw, parsed, envelope_from, mailbox, queue_id, key, notice)
                else:
                    filed = Filed(queue_id, ticket, duplicate=True)
                    log.info(
                        "queue_id=%s rcpt=%s ticket=%d duplicate delivery, not stored again",
                        queue_id,
                        mailbox.address,
                        ticket,
                    )
            except Exception:
                log.exception(
                    "queue_id=%s rcpt=%s: could not file the message", queue_id, mailbox.address
                )
                filed = None
            results.append(filed)
        return results

    def _file(
        self,
        raw: bytes,
        msg: ParsedMessage,
        envelope_from: str,
        mailbox: Mailbox,
        queue_id: str,
        key: str,
        notice: Notice | None = None,
    ) -> Filed:
        now = self.clock()
        with self._lock, transaction(self.db.conn):
            ticket = tickets_db.delivered_ticket(self.db, key)
            if ticket is not None:
                return Filed(queue_id, ticket, duplicate=True)
            applied = apply_notice(self.db, notice, mailbox.tenant, now) if notice else None
            if notice is not None and applied is not None:
                _log_notice(queue_id, mailbox, notice, applied)
                if not notice.failed:
                    # Delivered and delayed only change statuses, which the ticket shows.
                    return Filed(queue_id, applied.ticket, duplicate=False)
                placement = Placement(applied.ticket, "notice", automatic=True)
            else:
                placement = self._place(msg, envelope_from, mailbox)
            automatic = placement.automatic
            flags = "automatic" if automatic else ""
            ticket = placement.ticket
            if ticket is None:
                row = _ticket_row(msg, envelope_from, mailbox, flags, now)
                ticket = tickets_db.insert_row(self.db, "tickets", row)
            row = message_row(msg, raw, envelope_from, mailbox, flags, now)
            # A digest-based key means the message came without the gateway's queue id.
            from_gateway = key == f"{queue_id}:{mailbox.address}"
            row |= {"ticket": ticket, "idempotency_key": key}
            row |= {"queue_id": queue_id if from_gateway else None}
            message = tickets_db.insert_row(self.db, "messages", row)
            tickets_db.insert_attachments(self.db, attachment_rows(msg, message))
            people = participants_of(msg, mailbox.address, automatic)
            if placement.ticket is None and people and people[0][1] == "from":
                people[0] = (people[0][0], "requester")
            tickets_db.add_participants(self.db, ticket, people, now)
            tickets_db.touch_ticket(self.db, ticket, now)
            # The customer wrote again: a closed ticket needs someone again. An automatic
            # message (an out-of-office reply, a delivery notice) leaves it closed.
            reopened = (
                placement.ticket is not None
                and not automatic
                and reopen_on_message(self.db, ticket)
            )
        if reopened:
            log.info("queue_id=%s ticket=%d reopened by a new message", queue_id, ticket)
        log.info(
            "queue_id=%s rcpt=%s ticket=%d message_id=%s rule=%s%s",
            queue_id,
            mailbox.address,
            ticket,
            msg.message_id or "-",
            placement.rule,
            " automatic" if automatic else "",
        )
        return Filed(queue_id, ticket, duplicate=False)

    def _place(self, msg: ParsedMessage, envelope_from: str, mailbox: Mailbox) -> Placement:
        automatic = is_automatic(msg, envelope_from)
        refs = referenced_ids(msg, automatic)
        signed = {
            mid: number
            for mid in refs
            if self.message_id_key
            and (number := ticket_of_message_id(self.message_id_key, mid)) is not None
        }
        facts = ThreadFacts(
            tickets_db.known_messages(self.db, refs),
            tickets_db.known_tickets(self.db, [*subject_tags(msg.subject), *signed.values()]),
            signed,
        )
        return place(msg, automatic, mailbox.tenant, mailbox.address, facts)

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _log_notice(queue_id: str, mailbox: Mailbox, notice: Notice, applied: Applied) -> None:
    log.info(
        "queue_id=%s rcpt=%s ticket=%d message=%d notice on queue_id=%s: %s; reply %s",
        queue_id,
        mailbox.address,
        applied.ticket,
        applied.message,
        notice.queue_id or "-",
        ", ".join(f"{o.recipient} {o.status}" for o in notice.outcomes[:10]),
        applied.status,
    )


def _ticket_row(
    msg: ParsedMessage, envelope_from: str, mailbox: Mailbox, flags: str, now: float
) -> dict[str, Any]:
    return {
        "tenant": mailbox.tenant,
        "mailbox": mailbox.address,
        "subject": msg.subject,
        "requester": msg.from_addr or envelope_from,
        "flags": flags,
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
