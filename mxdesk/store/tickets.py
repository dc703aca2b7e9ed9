"""Filing a delivered message on a ticket: idempotency, duplicates, threading, one commit."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mxdesk.state import Mailbox, transaction
from mxdesk.store import db as tickets_db
from mxdesk.store.compose import ticket_of_message_id
from mxdesk.store.duplicates import (
    DUPLICATE,
    Seen,
    fingerprint,
    record_duplicate,
    seen_before,
)
from mxdesk.store.notices import Applied, Notice, apply_notice, read_notice
from mxdesk.store.parse import ParsedMessage, parse_message, queue_id_of
from mxdesk.store.rows import attachment_rows, inbound_ticket_row, message_marks, message_row
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
from mxdesk.store.verdicts import Verdicts, read_verdicts, sender_forged, sender_verified
from mxdesk.timefmt import timestamp

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger("mxdesk.store")
DEFAULT_DUPLICATE_WINDOW = 7 * 86400.0


@dataclass(frozen=True)
class Filed:
    """One recipient's copy is on a ticket (now, or already by an earlier delivery)."""

    queue_id: str
    ticket: int
    duplicate: bool


@dataclass(frozen=True)
class Arrival:
    """One delivered message as every recipient's filing needs it, worked out once."""

    raw: bytes
    msg: ParsedMessage
    envelope_from: str
    queue_id: str
    verdicts: Verdicts | None
    fingerprint: str
    notice: Notice | None


Delivery = tuple[bytes, str, Sequence[Mailbox]]  # raw message, envelope sender, recipients


def delivery_id(raw: bytes) -> tuple[str, str]:
    """(queue id for replies and logs, idempotency key prefix): the gateway's queue id from the
    first header line, else the SHA-256 of the bytes (another LMTP client)."""
    queue_id = queue_id_of(raw)
    if queue_id is None:
        digest = hashlib.sha256(raw).hexdigest()
        return digest[:16], digest
    return queue_id, queue_id


class TicketStore:
    """Files messages in tickets.db; one writer at a time, callable from worker threads.

    host_name: the gateway's, whose Authentication-Results header is trusted ('' trusts none);
    duplicate_window: seconds in which the same message arriving again is filed once (0: off).
    """

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        message_id_key: bytes | None = None,
        host_name: str = "",
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
    ) -> None:
        self.db = db
        self.clock = clock
        self.message_id_key = message_id_key
        self.host_name = host_name
        self.duplicate_window = duplicate_window
        self._lock = threading.Lock()

    def file_all(
        self, raw: bytes, envelope_from: str, mailboxes: Sequence[Mailbox]
    ) -> list[Filed | None]:
        """Files one copy per recipient mailbox; None where a temporary error stopped it."""
        return self.file_many([(raw, envelope_from, mailboxes)])[0]

    def file_many(self, deliveries: Sequence[Delivery]) -> list[list[Filed | None]]:
        """Files several deliveries in ONE transaction, so one commit (one fsync) makes all of
        them durable: the store's group commit. Each copy is filed in a savepoint of its own:
        an error loses only that copy (None: its client is answered 451 and sends it again);
        a failed commit loses the batch (all None). Parsing happens before the transaction."""
        arrivals: list[Arrival | None] = []
        for raw, envelope_from, _ in deliveries:
            queue_id = delivery_id(raw)[0]
            try:
                arrivals.append(self._arrival(raw, envelope_from, queue_id))
            except Exception:
                log.exception("queue_id=%s: could not read the message", queue_id)
                arrivals.append(None)
        results: list[list[Filed | None]] = [[None] * len(d[2]) for d in deliveries]
        done: list[Callable[[], None]] = []
        conn = self.db.conn
        try:
            with self._lock, transaction(conn):
                for i, ((raw, _, mailboxes), arrival) in enumerate(
                    zip(deliveries, arrivals, strict=True)
                ):
                    queue_id, prefix = delivery_id(raw)
                    for j, mailbox in enumerate(mailboxes):
                        conn.execute("SAVEPOINT copy")
                        try:
                            if arrival is None:
                                raise ValueError("the message could not be read")
                            filed, said = self._file(
                                arrival, mailbox, f"{prefix}:{mailbox.address}"
                            )
                            conn.execute("RELEASE copy")
                        except Exception:
                            conn.execute("ROLLBACK TO copy")
                            conn.execute("RELEASE copy")
                            log.exception(
                                "queue_id=%s rcpt=%s: could not file the message",
                                queue_id,
                                mailbox.address,
                            )
                            continue
                        results[i][j] = filed
                        done.append(said)
        except Exception:
            log.exception("filing %d messages: the commit failed, none is stored", len(deliveries))
            return [[None] * len(d[2]) for d in deliveries]
        for said in done:
            said()
        return results

    def _arrival(self, raw: bytes, envelope_from: str, queue_id: str) -> Arrival:
        notice = None
        # The gateway sends its notices from the null sender (RFC 3464 §2): a cheap first test.
        if self.message_id_key is not None and envelope_from == "":
            notice = read_notice(raw, self.message_id_key)
        verdicts = None
        try:
            verdicts = read_verdicts(raw, self.host_name) if self.host_name else None
        except Exception:  # a reader bug must not lose the message: it counts as not verified
            log.exception("queue_id=%s: could not read the Authentication-Results", queue_id)
        msg = parse_message(raw)
        return Arrival(raw, msg, envelope_from, queue_id, verdicts, fingerprint(raw), notice)

    def _file(
        self, arrival: Arrival, mailbox: Mailbox, key: str
    ) -> tuple[Filed, Callable[[], None]]:
        """One copy, inside the caller's transaction; with what to log once it is committed."""
        now = self.clock()
        msg, queue_id, notice = arrival.msg, arrival.queue_id, arrival.notice
        ticket = tickets_db.delivered_ticket(self.db, key)
        if ticket is not None:
            return Filed(queue_id, ticket, duplicate=True), lambda: log.info(
                "queue_id=%s rcpt=%s ticket=%d duplicate delivery, not stored again",
                queue_id,
                mailbox.address,
                ticket,
            )
        # A digest-based key means the message came without the gateway's queue id.
        gateway_id = queue_id if key == f"{queue_id}:{mailbox.address}" else None
        seen = self._seen(arrival, mailbox.tenant, now)
        if seen is not None and seen.kind == DUPLICATE:
            record_duplicate(self.db, key, gateway_id, seen, mailbox.address, now)
            return Filed(queue_id, seen.ticket, duplicate=True), lambda: _log_duplicate(
                arrival, mailbox, seen
            )
        applied = apply_notice(self.db, notice, mailbox.tenant, now) if notice else None
        if notice is not None and applied is not None:
            if not notice.failed:
                # Delivered and delayed only change statuses, which the ticket shows.
                filed = Filed(queue_id, applied.ticket, duplicate=False)
                return filed, lambda: _log_notice(queue_id, mailbox, notice, applied)
            placement = Placement(applied.ticket, "notice", automatic=True)
        else:
            placement = self._place(arrival, mailbox)
        ticket = self._store(arrival, mailbox, (key, gateway_id), placement, seen, now)
        # The customer wrote again: a closed ticket needs someone again. An automatic message
        # (an out-of-office reply, a delivery notice) leaves it closed.
        reopened = (
            placement.ticket is not None
            and not placement.automatic
            and reopen_on_message(self.db, ticket)
        )

        def said() -> None:
            if applied is not None and notice is not None:
                _log_notice(queue_id, mailbox, notice, applied)
            if reopened:
                log.info("queue_id=%s ticket=%d reopened by a new message", queue_id, ticket)
            log.info(
                "queue_id=%s rcpt=%s ticket=%d message_id=%s rule=%s%s%s%s",
                queue_id,
                mailbox.address,
                ticket,
                msg.message_id or "-",
                placement.rule,
                " automatic" if placement.automatic else "",
                f" claims=#{placement.claim.ticket} ({placement.claim.reason})"
                if placement.claim
                else "",
                f" message-id {seen.kind} (message {seen.message})" if seen else "",
            )

        return Filed(queue_id, ticket, duplicate=False), said

    def _seen(self, arrival: Arrival, tenant: str, now: float) -> Seen | None:
        if arrival.msg.message_id is None:
            return None
        since = now - self.duplicate_window if self.duplicate_window > 0 else None
        return seen_before(self.db, tenant, arrival.msg.message_id, arrival.fingerprint, since)

    def _store(
        self,
        arrival: Arrival,
        mailbox: Mailbox,
        ids: tuple[str, str | None],
        placement: Placement,
        seen: Seen | None,
        now: float,
    ) -> int:
        """Writes the message (and a new ticket, its attachments and participants); ids: its
        idempotency key and the gateway's queue id (None from another LMTP client)."""
        msg, automatic = arrival.msg, placement.automatic
        ticket = placement.ticket
        if ticket is None:
            row = inbound_ticket_row(msg, arrival.envelope_from, mailbox, placement, now)
            ticket = tickets_db.insert_row(self.db, "tickets", row)
        forged = sender_forged(arrival.verdicts, msg.from_addr)
        flags, note = message_marks(msg, placement, seen, forged)
        row = message_row(msg, arrival.raw, arrival.envelope_from, mailbox, flags, now)
        row |= {"ticket": ticket, "idempotency_key": ids[0], "queue_id": ids[1], "note": note}
        row |= {"fingerprint": arrival.fingerprint}
        row |= {"verdicts": arrival.verdicts.to_json() if arrival.verdicts else None}
        message = tickets_db.insert_row(self.db, "messages", row)
        tickets_db.insert_attachments(self.db, attachment_rows(msg, message))
        people = participants_of(msg, mailbox.address, automatic)
        if placement.ticket is None and people and people[0][1] == "from":
            people[0] = (people[0][0], "requester")
        tickets_db.add_participants(self.db, ticket, people, now)
        tickets_db.touch_ticket(self.db, ticket, now)
        return ticket

    def _place(self, arrival: Arrival, mailbox: Mailbox) -> Placement:
        msg = arrival.msg
        automatic = is_automatic(msg, arrival.envelope_from)
        refs = referenced_ids(msg, automatic)
        signed = {
            mid: number
            for mid in refs
            if self.message_id_key
            and (number := ticket_of_message_id(self.message_id_key, mid)) is not None
        }
        known = tickets_db.known_messages(self.db, refs)
        # The tickets a reference could join: whether the sender takes part in them.
        referenced = {k.ticket for ks in known.values() for k in ks if k.tenant == mailbox.tenant}
        numbers = [*subject_tags(msg.subject), *signed.values(), *sorted(referenced)]
        tickets = tickets_db.known_tickets(self.db, dict.fromkeys(numbers), msg.from_addr)
        facts = ThreadFacts(known, tickets, signed)
        verified = sender_verified(arrival.verdicts, msg.from_addr)
        return place(msg, automatic, mailbox.tenant, mailbox.address, facts, verified)

    def close(self) -> None:
        with self._lock:
            self.db.close()


def _log_duplicate(arrival: Arrival, mailbox: Mailbox, seen: Seen) -> None:
    log.info(
        "queue_id=%s rcpt=%s ticket=%d message_id=%s already stored as message %d (same"
        " Message-ID and content, filed at %s), not stored again",
        arrival.queue_id,
        mailbox.address,
        seen.ticket,
        arrival.msg.message_id,
        seen.message,
        timestamp(seen.created),
    )


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
