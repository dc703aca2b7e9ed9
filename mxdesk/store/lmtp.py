"""The store's LMTP server (RFC 2033) on a Unix socket; it only translates the wire to a handler.

Its sessions are the gateway's SMTP sessions (mxdesk/gateway/smtpsession.py) with LHLO for
HELO and EHLO, BDAT (RFC 3030), and a reply for each accepted recipient after the message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from mxdesk.gateway.smtp import R552_TOO_BIG, ConnectionLimits, GatewayEnvelope
from mxdesk.gateway.smtpsession import SYNTAX, SmtpSession
from mxdesk.sockets import SocketError, listen_unix
from mxdesk.state import Mailbox
from mxdesk.store.decode import without_controls
from mxdesk.store.tickets import Filed

__all__ = ["LmtpHandler", "LmtpSession", "SocketError", "listen_unix"]

log = logging.getLogger("mxdesk.store")

R250_FILED = "250 2.0.0 {queue_id} ticket #{ticket}"
R250_ALREADY_FILED = "250 2.0.0 {queue_id} ticket #{ticket} already stored"
R250_RECIPIENT_OK = "250 2.1.5 OK"
R250_SENDER_OK = "250 OK"
R451_LOCAL_ERROR = "451 4.3.0 Temporary failure in the ticket store, try again later"
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
R550_NO_MAILBOX = "550 5.1.1 <{address}>: no such mailbox"
MAX_ECHOED_ADDRESS = 254
R250_CHUNK = "250 2.0.0 {size} octets received"
R501_BDAT = "501 5.5.4 Syntax: BDAT chunk-size [LAST]"
R503_BDAT_NO_RCPT = "503 5.5.1 Error: need RCPT command"
R503_BDAT_FAILED = "503 5.5.1 Error: an earlier chunk of this message was refused"
R503_DATA_AFTER_BDAT = "503 5.5.1 Error: DATA after BDAT in one transaction"
# RFC 3030 §2: "BDAT" SP chunk-size [ SP end-marker ]; a size beyond 18 digits is not a size.
_BDAT = re.compile(r"(\d{1,18})(?: +(LAST))?", re.IGNORECASE)
# LMTP's commands: LHLO instead of HELO and EHLO (RFC 2033 §4.1), BDAT, no STARTTLS.
LMTP_SYNTAX = {
    **{verb: text for verb, text in SYNTAX.items() if verb not in ("HELO", "EHLO", "STARTTLS")},
    "LHLO": "LHLO hostname",
    "BDAT": "BDAT chunk-size [LAST]",
}
# A delivery connection stays open between messages; the gateway drops it after 60 s idle.
IDLE_SECONDS = 300.0


class MailboxDirectory(Protocol):
    """Finds the hosted mailbox for a recipient address; may raise on a storage error."""

    def find(self, address: str) -> Mailbox | None: ...


class Filer(Protocol):
    """Files one message for each recipient; None in the result is a temporary failure."""

    async def file(
        self, raw: bytes, envelope_from: str, mailboxes: Sequence[Mailbox]
    ) -> list[Filed | None]: ...


class LmtpEnvelope(GatewayEnvelope):
    """An envelope that remembers the mailbox each accepted recipient resolved to, and the
    BDAT chunks of its message so far (None once one was refused, until the transaction
    ends)."""

    def __init__(self) -> None:
        super().__init__()
        self.mailboxes: list[Mailbox] = []
        self.chunks: bytearray | None = bytearray()


class LmtpHandler:
    """What the sessions ask: MAIL is taken, RCPT asks the mailbox directory, the message
    goes to the filer."""

    def __init__(self, mailboxes: MailboxDirectory, filer: Filer, max_recipients: int) -> None:
        self.mailboxes = mailboxes
        self.filer = filer
        self.max_recipients = max_recipients

    def mail(self, session: Any, envelope: LmtpEnvelope, address: str, options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return R250_SENDER_OK

    def rcpt(self, session: Any, envelope: LmtpEnvelope, address: str, options: list[str]) -> str:
        if len(envelope.mailboxes) >= self.max_recipients:
            return R452_TOO_MANY_RECIPIENTS
        address = _printable(address).lower()[:MAX_ECHOED_ADDRESS]
        local, _, domain = address.rpartition("@")
        try:
            mailbox = self.mailboxes.find(address)
            if mailbox is None and "+" in local:
                # suporte+x@ reaches suporte@, for clients that do not canonicalise as we do.
                mailbox = self.mailboxes.find(f"{local.split('+', 1)[0]}@{domain}")
        except Exception:
            log.exception("rcpt=%s: mailbox lookup failed", address)
            return R451_LOCAL_ERROR
        # A disabled mailbox still gets what the gateway said 250 for before it was disabled
        # (and the delivery notices of its replies): the MX refuses new mail for it at RCPT.
        if mailbox is None:
            return R550_NO_MAILBOX.format(address=address)
        envelope.rcpt_tos.append(mailbox.address)
        envelope.mailboxes.append(mailbox)
        return R250_RECIPIENT_OK

    async def data(self, session: Any, envelope: LmtpEnvelope) -> str:
        sender = _printable(envelope.mail_from or "")
        envelope_from = "" if sender == "<>" else sender
        try:
            results = await self.filer.file(
                envelope.original_content or b"", envelope_from, envelope.mailboxes
            )
        except Exception:
            log.exception("filing failed for %d recipients", len(envelope.mailboxes))
            results = [None] * len(envelope.mailboxes)
        # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
        return "\r\n".join(_reply(r) for r in results)

    def exception(self, error: Exception) -> str:
        log.error("LMTP session error", exc_info=error)
        return R451_LOCAL_ERROR

    def log_refusal(self, client: str, envelope: Any, reply: str) -> None:
        """A refusal is the gateway's to log: it keeps the entry and says why it waits."""


class LmtpSession(SmtpSession):
    """One delivery connection from the gateway."""

    syntax = LMTP_SYNTAX
    hello = "LHLO"
    extensions = ("250-CHUNKING",)  # so that a message leaves with its envelope in one write

    def __init__(
        self,
        handler: LmtpHandler,
        sessions: set[Any],
        *,
        hostname: str,
        data_size_limit: int = 0,
        ident: str = "mxdesk store",
        idle_timeout: float = IDLE_SECONDS,
    ) -> None:
        limits = ConnectionLimits(sys.maxsize, sys.maxsize, sessions=sessions)
        super().__init__(
            handler,
            limits,
            asyncio.get_running_loop(),
            hostname=hostname,
            tls=None,
            data_size_limit=data_size_limit,
            idle_timeout=idle_timeout,
            session_timeout=math.inf,
        )
        self.ident = ident

    def new_envelope(self) -> LmtpEnvelope:
        return LmtpEnvelope()

    def smtp_LHLO(self, arg: str) -> None:
        self._extended_hello(arg, "LHLO")

    def _after_message(self, status: str, envelope: GatewayEnvelope) -> str:
        # A size error or a failure of ours is said once by the session: RFC 2033 §4.2 wants
        # it for each accepted recipient.
        if "\r\n" in status or len(envelope.rcpt_tos) < 2:
            return status
        return "\r\n".join([status] * len(envelope.rcpt_tos))

    def smtp_DATA(self, arg: str) -> None:
        chunks = self._envelope().chunks
        if chunks is None or chunks:
            # RFC 3030 §3: a message is sent with DATA or with BDAT, never both.
            self._reply(R503_DATA_AFTER_BDAT)
            return
        super().smtp_DATA(arg)

    def _envelope(self) -> LmtpEnvelope:
        envelope = self.envelope
        assert isinstance(envelope, LmtpEnvelope)
        return envelope

    def smtp_BDAT(self, arg: str) -> None:
        """RFC 3030 CHUNKING: the message in chunks of a stated size, taken as they are (no
        dot-stuffing, no end line). Every chunk is read whole, refused or not, so that what
        follows it is read as the next command; one reply to each chunk, and after the LAST
        one a reply for each accepted recipient (RFC 2033 §4.2), as after DATA's final dot."""
        match = _BDAT.fullmatch(arg)
        if match is None:
            # Without a size the chunk's end cannot be found: its bytes would be read as
            # commands. The session ends.
            self._reply(R501_BDAT)
            self._flush()
            assert self.transport is not None
            self.transport.close()
            return
        size, last = int(match[1]), match[2] is not None
        envelope = self._envelope()
        refusal = self._no_hello()
        if refusal is None and not envelope.rcpt_tos:
            refusal = R503_BDAT_NO_RCPT
        elif refusal is None and envelope.chunks is None:
            refusal = R503_BDAT_FAILED
        limit = self._size_limit
        if refusal is None and limit and len(envelope.chunks or b"") + size > limit:
            refusal, envelope.chunks = R552_TOO_BIG, None  # the rest of the message is refused too

        def read(kept: bytes) -> None:
            self._chunk_read(envelope, size, last, refusal, kept)

        self._read_chunk(size, keep=refusal is None, then=read)

    def _chunk_read(
        self, envelope: LmtpEnvelope, size: int, last: bool, refusal: str | None, kept: bytes
    ) -> None:
        if refusal in (R552_TOO_BIG, R503_BDAT_FAILED) and last:
            self._refuse_message(refusal)  # each recipient answered, as after DATA
            return
        if refusal is not None:
            self._reply(refusal)
            return
        assert envelope.chunks is not None
        if not last:
            envelope.chunks += kept
            self._reply(R250_CHUNK.format(size=size))
            return
        content = bytes(envelope.chunks + kept) if envelope.chunks else kept
        envelope.chunks = bytearray()
        # The replies to MAIL and RCPT leave with the message's: the gateway, which pipelines
        # them with the chunk, reads all of them in one go.
        self._take_message(content)


def _printable(text: str) -> str:
    # Undecodable bytes are kept as surrogates; they cannot be encoded in a reply.
    return without_controls(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _reply(result: Filed | None) -> str:
    if result is None:
        return R451_LOCAL_ERROR
    template = R250_ALREADY_FILED if result.duplicate else R250_FILED
    return template.format(queue_id=result.queue_id, ticket=result.ticket)
