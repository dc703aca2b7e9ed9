"""Delivery status notices (RFC 3464) from mxdesk's gateway, applied to the replies they name."""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import TYPE_CHECKING

from mxdesk.secrets import is_notice_message_id
from mxdesk.store import db as tickets_db
from mxdesk.store.db import DEFERRED, FAILED, SENT
from mxdesk.store.decode import without_controls

if TYPE_CHECKING:
    from sqlite_utils import Database

# RFC 3464 §2.3.3: relayed and expanded are as far as a notice can follow the message.
ACTIONS = {
    "delivered": SENT,
    "relayed": SENT,
    "expanded": SENT,
    "delayed": DEFERRED,
    "failed": FAILED,
}
MAX_RECIPIENTS = 1000
MAX_FIELD = 1000


@dataclass(frozen=True)
class Outcome:
    """What a notice says about one recipient, as a delivery status."""

    recipient: str
    status: str
    detail: str


@dataclass(frozen=True)
class Notice:
    """A notice the installation's key vouches for."""

    message_id: str
    envid: str
    queue_id: str  # the reported outbound entry's, not the notice's own
    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> bool:
        return any(o.status == FAILED for o in self.outcomes)


@dataclass(frozen=True)
class Applied:
    """The reply a notice was about, and its status afterwards."""

    message: int
    ticket: int
    status: str


def read_notice(raw: bytes, key: bytes) -> Notice | None:
    """The notice in raw when it is one and its Message-ID carries the gateway's MAC (anyone
    can send a multipart/report); None for any other message. Never raises."""
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        if msg.get_content_type() != "multipart/report":
            return None
        if str(msg.get_param("report-type", "")).lower() != "delivery-status":
            return None
        message_id = str(msg.get("message-id", "")).strip()
        if not is_notice_message_id(key, message_id):
            return None
        return _fields(message_id, msg)
    except Exception:  # a notice too broken to read is filed as the mail it also is
        return None


def _fields(message_id: str, msg: Message) -> Notice | None:
    part = next((p for p in msg.walk() if p.get_content_type() == "message/delivery-status"), None)
    if part is None or not part.is_multipart():
        return None
    # The email package parses a delivery-status body into header blocks: first the
    # per-message fields, then one block per recipient (RFC 3464 §2.1).
    blocks = [b for b in part.get_payload() if isinstance(b, Message)]
    if not blocks:
        return None
    envid = _field(blocks[0], "original-envelope-id")
    outcomes = [o for b in blocks[1 : MAX_RECIPIENTS + 1] if (o := _outcome(b)) is not None]
    if not envid or not outcomes:
        return None
    return Notice(message_id, envid, _field(blocks[0], "x-mxdesk-queue-id"), tuple(outcomes))


def _outcome(block: Message) -> Outcome | None:
    status = ACTIONS.get(_field(block, "action").lower())
    recipient = _typed(_field(block, "final-recipient")).strip("<>").lower()
    if status is None or not recipient:
        return None
    diagnostic = _typed(_field(block, "diagnostic-code"))
    return Outcome(recipient, status, diagnostic or _field(block, "status"))


def _field(block: Message, name: str) -> str:
    return " ".join(without_controls(str(block.get(name, ""))).split())[:MAX_FIELD]


def _typed(value: str) -> str:
    """The value of a typed field such as 'rfc822; a@b' or 'smtp; 550 …' without its type."""
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in kind.strip() else value


def apply_notice(db: Database, notice: Notice, tenant: str, now: float) -> Applied | None:
    """Records each recipient's outcome on the reply the notice names by its envelope id,
    within the tenant it was delivered to; None when there is no such reply. Applying the
    same notice again changes nothing."""
    rows = list(
        db.query(
            "SELECT m.id, m.ticket FROM messages m JOIN tickets t ON t.number = m.ticket"
            " WHERE m.envid = ? AND m.direction = 'out' AND t.tenant = ?",
            # Upper case: that is how envids are made, and how an SMTP server may pass them on.
            [notice.envid.upper(), tenant],
        )
    )
    if not rows:
        return None
    message, ticket = int(rows[0]["id"]), int(rows[0]["ticket"])
    for o in notice.outcomes:
        tickets_db.set_delivery(db, message, o.recipient, o.status, o.detail, now)
    return Applied(message, ticket, tickets_db.refresh_status(db, message))
