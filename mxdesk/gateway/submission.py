"""The submission listener: SMTP on a local Unix socket, for senders the socket user may use.

The store (or a helpdesk app) hands replies over here. Who may submit is decided by the
connecting process's Unix user (SO_PEERCRED), what they may send by the tenants that user may
send for: the envelope sender must be on an active domain of one of them, or be one of their
default inboxes. An accepted message is normalised and committed to the spool before the 250,
exactly as on the MX side; the outbound runner signs it as it leaves (gateway/departure.py), and
a message no key could sign is refused here. DSN requests (RFC 3461: RET, ENVID, NOTIFY) are kept
with the entry so the outbound runner can report back.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import re
import socket
import struct
import time
from email.utils import formatdate, make_msgid
from typing import Any

from mxdesk.gateway.dkim import normalise_line_endings
from mxdesk.gateway.mx import R250_MAIL_OK, R250_RCPT_OK, R451_LOCAL_ERROR, R452_TOO_MANY_RCPTS
from mxdesk.gateway.senders import SenderPolicy
from mxdesk.gateway.smtp import GatewayEnvelope
from mxdesk.gateway.smtpsession import SmtpSession
from mxdesk.gateway.spool import NewEntry, Recipient, Spool, SpoolError, new_queue_id
from mxdesk.metrics import GatewayMetrics
from mxdesk.timefmt import header_date

log = logging.getLogger("mxdesk.gateway.submission")
OUTBOUND = "out"

R550_SENDER = "550 5.7.1 Sender address rejected: not an address you may send from"
R550_NULL_SENDER = "550 5.7.1 Sender address rejected: a submission needs a sender"
R553_RCPT_SYNTAX = "553 5.1.3 Recipient address rejected: bad address syntax"
R501_DSN_PARAM = "501 5.5.4 Syntax error in a DSN parameter (RFC 3461)"
R550_NO_SIGNING_KEY = "550 5.7.1 Message refused: no DKIM key for the sender's domain"

_XTEXT = re.compile(r"^([!-*,-<>-~]|\+[0-9A-F]{2})*$")  # RFC 3461 §4: printable, no + or =
_NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")


_USER_NAMES: dict[int, tuple[str, float]] = {}  # uid: (name, until when it is believed)
USER_NAME_SECONDS = 60.0  # getpwuid reads the password database: once a minute per uid


def peer_user(transport: asyncio.BaseTransport) -> tuple[int, str]:
    """The connecting process's uid and user name, from the kernel (SO_PEERCRED)."""
    sock = transport.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    now = time.monotonic()
    known = _USER_NAMES.get(uid)
    if known is not None and known[1] > now:
        return uid, known[0]
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    _USER_NAMES[uid] = (name, now + USER_NAME_SECONDS)
    return uid, name


def _split_params(arg: str) -> tuple[str, dict[str, str]] | None:
    """Splits "FROM:<a> K=V …" into the part the session's MAIL or RCPT takes and the DSN
    parameters, keeping their values' case (the session upper-cases every parameter)."""
    end = arg.find(">")
    if end < 0:
        return arg, {}
    head, params = arg[: end + 1], arg[end + 1 :].split()
    kept, dsn = [], {}
    for param in params:
        name, _, value = param.partition("=")
        if name.upper() in ("RET", "ENVID", "NOTIFY", "ORCPT"):
            if not value or name.upper() in dsn:
                return None
            dsn[name.upper()] = value
        else:
            kept.append(param)
    return " ".join([head, *kept]), dsn


def _valid_notify(value: str) -> bool:
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return True
    return bool(words) and all(w in _NOTIFY_WORDS for w in words) and len(set(words)) == len(words)


class SubmissionEnvelope(GatewayEnvelope):
    def __init__(self) -> None:
        super().__init__()
        self.tenant = ""
        self.envid = ""
        self.ret = ""
        self.recipients: list[Recipient] = []


class SubmissionSession(SmtpSession):
    """A session on the submission socket: the peer's user decides what it may send."""

    ident = "mxdesk submission"
    extensions = ("250-DSN",)
    uid = -1
    user = ""

    def met(self, transport: asyncio.Transport) -> None:
        self.uid, self.user = peer_user(transport)

    def new_envelope(self) -> SubmissionEnvelope:
        return SubmissionEnvelope()

    def smtp_MAIL(self, arg: str) -> None:
        split = _split_params(arg)
        if split is None:
            self._reply(R501_DSN_PARAM)
            return
        rest, dsn = split
        ret, envid = dsn.get("RET", "").upper(), dsn.get("ENVID", "")
        if set(dsn) - {"RET", "ENVID"} or ret not in ("", "FULL", "HDRS"):
            self._reply(R501_DSN_PARAM)
            return
        if envid and (len(envid) > 100 or not _XTEXT.match(envid)):
            self._reply(R501_DSN_PARAM)
            return
        super().smtp_MAIL(rest)
        envelope = self.envelope
        if isinstance(envelope, SubmissionEnvelope) and envelope.mail_from is not None:
            envelope.ret, envelope.envid = ret, envid

    def smtp_RCPT(self, arg: str) -> None:
        split = _split_params(arg)
        if split is None:
            self._reply(R501_DSN_PARAM)
            return
        rest, dsn = split
        notify = dsn.get("NOTIFY", "").upper()
        if set(dsn) - {"NOTIFY", "ORCPT"} or (notify and not _valid_notify(notify)):
            self._reply(R501_DSN_PARAM)
            return
        envelope = self.envelope
        before = len(envelope.rcpt_tos)
        super().smtp_RCPT(rest)
        if isinstance(envelope, SubmissionEnvelope) and len(envelope.rcpt_tos) > before:
            envelope.recipients[-1] = Recipient(
                envelope.recipients[-1].original,
                envelope.recipients[-1].mailbox,
                envelope.tenant,
                notify=notify,
            )


def _recipient(address: str) -> Recipient | None:
    local, at, domain = address.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not local or len(address) > 254 or local.startswith("@"):
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _DOMAIN.match(ascii_domain):
        return None
    return Recipient(address, f"{local}@{domain}", "")


class SubmissionHandler:
    """What the submission socket's sessions ask: may this user send as this sender, to this
    recipient, and the message kept."""

    def __init__(
        self,
        senders: SenderPolicy,
        spool: Spool,
        host_name: str,
        max_recipients: int,
        send_delay: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._metrics = metrics or GatewayMetrics()
        self._senders = senders
        self._spool = spool
        self._host_name = host_name
        self._max_recipients = max_recipients
        self._send_delay = send_delay

    def mail(
        self, session: Any, envelope: SubmissionEnvelope, address: str, opts: list[str]
    ) -> str:
        if not address or address == "<>":
            return R550_NULL_SENDER
        tenant = self._senders.tenant_of(address, session.uid, session.user)
        envelope.attempted = address  # for the refusal's log line (push() forgets it after)
        if tenant is None:
            log.warning("uid=%s user=%s from=<%s> refused", session.uid, session.user, address)
            return R550_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(opts)
        envelope.tenant = tenant
        return R250_MAIL_OK

    def rcpt(
        self, session: Any, envelope: SubmissionEnvelope, address: str, opts: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return R452_TOO_MANY_RCPTS
        recipient = _recipient(address)
        if recipient is None:
            return R553_RCPT_SYNTAX
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(opts)
        envelope.recipients.append(recipient)
        return R250_RCPT_OK

    async def data(self, session: Any, envelope: SubmissionEnvelope) -> str:
        queue_id = new_queue_id()
        message = self._prepare(envelope.original_content or b"", queue_id, session)
        # Signed as it leaves (gateway/departure.py); refused now if nothing could sign it.
        keys = self._senders.signing_keys(message, envelope.tenant, envelope.mail_from or "")
        if not keys:
            return R550_NO_SIGNING_KEY
        held = self._senders.waiting_for(keys)
        entry = NewEntry(
            queue_id,
            OUTBOUND,
            f"uid {session.uid}",
            envelope.mail_from or "",
            tuple(envelope.recipients),
            message,
            envid=envelope.envid,
            ret=envelope.ret,
            not_before=time.time() + self._send_delay,
            held=held,
        )
        try:
            await self._spool.commit(entry)
        except SpoolError:
            log.error("queue_id=%s from=<%s> not spooled: storage error", queue_id, entry.mail_from)
            return R451_LOCAL_ERROR
        self._metrics.accept("submission")
        log.info(
            "queue_id=%s uid=%s from=<%s> to=%s size=%d envid=%s result=%s",
            queue_id,
            session.uid,
            entry.mail_from,
            ",".join(f"<{r.mailbox}>" for r in entry.recipients),
            len(message),
            entry.envid or "-",
            f"held ({held})" if held else "queued",
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _prepare(self, content: bytes, queue_id: str, session: Any) -> bytes:
        """CRLF line endings (so the signature survives the SMTP client's rewriting), a trace
        header, and the Date and Message-ID a local submission may lack (RFC 6409 §8)."""
        message = normalise_line_endings(content)
        head = message.split(b"\r\n\r\n", 1)[0].lower()
        extra = [
            f"Received: from {session.user} (uid {session.uid})\r\n\tby {self._host_name}"
            f" (mxdesk) with ESMTP id {queue_id};\r\n\t{header_date()}\r\n"
        ]
        if not head.startswith(b"date:") and b"\r\ndate:" not in head:
            extra.append(f"Date: {formatdate(localtime=True)}\r\n")
        if not head.startswith(b"message-id:") and b"\r\nmessage-id:" not in head:
            extra.append(f"Message-ID: {make_msgid(domain=self._host_name)}\r\n")
        return "".join(extra).encode() + message

    def exception(self, error: Exception) -> str:
        log.exception("internal error in a submission session: %r", error)
        return R451_LOCAL_ERROR

    def log_refusal(self, client: str, envelope: Any, reply: str) -> None:
        self._metrics.refuse("submission", reply)
        sender = envelope.mail_from or envelope.attempted
        log.info("submission from=<%s> refused: %s", sender, reply[:200])
