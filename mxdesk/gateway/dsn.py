"""Delivery status notifications (RFC 3464) for outbound entries: failed, delayed, delivered."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate

from mxdesk.gateway.lmtp import Reply
from mxdesk.gateway.spool import Recipient, SpoolEntry
from mxdesk.secrets import notice_message_id

FAILED, DELAYED, DELIVERED = "failed", "delayed", "delivered"
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")
_SUBJECTS = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delivery Status Notification (Delay)",
    DELIVERED: "Delivery Status Notification (Success)",
}
_INTRO = {
    FAILED: "Your message could not be delivered to one or more recipients.\n"
    "It has been returned to you; no further attempts will be made.",
    DELAYED: "Your message has not been delivered yet to one or more recipients.\n"
    "Delivery will be tried again; you do not need to send it again.",
    DELIVERED: "Your message was delivered to the recipients below.",
}


@dataclass(frozen=True)
class RecipientReport:
    recipient: Recipient
    action: str
    reply: Reply


def wants(recipient: Recipient, event: str) -> bool:
    """Whether the submitter asked to hear of event (RFC 3461 §4.1; no NOTIFY = FAILURE)."""
    notify = recipient.notify.upper().split(",") if recipient.notify else ["FAILURE"]
    return event in notify


def status_code(reply: Reply) -> str:
    """The RFC 3463 code of a reply: its own enhanced code, else one from its class."""
    match = _ENHANCED.match(reply.text)
    if match:
        return match[1]
    return f"{reply.code // 100}.0.0"


def _remote(reply: Reply) -> str:
    """The host name of the server that answered ("" when none did)."""
    return str(getattr(reply, "remote", "")).split("[", 1)[0]


def _oneline(text: str) -> str:
    return " ".join(text.split())[:900]


def _delivery_status(
    entry: SpoolEntry, reports: Sequence[RecipientReport], host_name: str, now: float
) -> str:
    fields = [f"Reporting-MTA: dns; {host_name}", f"X-Mxdesk-Queue-Id: {entry.id}"]
    if entry.envid:
        fields.append(f"Original-Envelope-Id: {entry.envid}")
    fields.append(f"Arrival-Date: {formatdate(entry.created, localtime=True)}")
    groups = ["\n".join(fields)]
    for report in reports:
        r, reply = report.recipient, report.reply
        lines = [f"Final-Recipient: rfc822; {r.mailbox}"]
        if r.original != r.mailbox:
            lines.append(f"Original-Recipient: rfc822; {r.original}")
        lines += [f"Action: {report.action}", f"Status: {status_code(reply)}"]
        remote = _remote(reply)
        if remote:
            lines.append(f"Remote-MTA: dns; {remote}")
            lines.append(f"Diagnostic-Code: smtp; {_oneline(str(reply))}")
        else:
            lines.append(f"Diagnostic-Code: X-Mxdesk; {_oneline(str(reply))}")
        lines.append(f"Last-Attempt-Date: {formatdate(now, localtime=True)}")
        groups.append("\n".join(lines))
    return "\n\n".join(groups) + "\n"


def _human(action: str, reports: Sequence[RecipientReport], host_name: str) -> str:
    lines = [f"This is the mail system at {host_name}.", "", _INTRO[action], ""]
    for report in reports:
        lines.append(f"<{report.recipient.mailbox}>: {_oneline(str(report.reply))}")
    return "\n".join(lines) + "\n"


def build_notice(
    entry: SpoolEntry,
    reports: Sequence[RecipientReport],
    *,
    notice_id: str,
    host_name: str,
    key: bytes,
    now: float,
) -> bytes:
    """The DSN for reports (all of one action) about entry, addressed to its sender.

    Written out by hand: the structure is fixed (RFC 3464 §2, RFC 6522), and the returned
    message must be carried byte for byte, which the email package does not promise for a
    message/rfc822 part.
    """
    action = reports[0].action
    boundary = f"{notice_id}.{int(now)}/{host_name}"
    head, _, _ = entry.data.partition(b"\r\n\r\n")
    if action == FAILED and entry.ret != "HDRS":
        returned_type, returned = "message/rfc822", entry.data
    else:
        returned_type, returned = "text/rfc822-headers", head + b"\r\n"
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host_name}>",
        f"To: <{entry.mail_from}>",
        f"Subject: {_SUBJECTS[action]}",
        f"Date: {formatdate(now, localtime=True)}",
        f"Message-ID: {notice_message_id(key, notice_id, host_name)}",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: nobody answers this automatically
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        _human(action, reports, host_name),
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        _delivery_status(entry, reports, host_name, now),
        f"--{boundary}",
        "Content-Description: The original message"
        + ("" if returned is entry.data else "'s headers"),
        f"Content-Type: {returned_type}",
        "Content-Transfer-Encoding: 8bit",
        "",
        "",
    ]
    text = "\r\n".join(line.replace("\n", "\r\n") for line in top)
    return text.encode() + returned + f"\r\n--{boundary}--\r\n".encode()
