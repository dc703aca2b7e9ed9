"""The store's LMTP server (RFC 2033) on a Unix socket; it only translates the wire to a handler."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any, AnyStr, Protocol

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from mxdesk.smtpfast import DATA_BLOCK, BlockDataSMTP, with_extensions
from mxdesk.sockets import SocketError, listen_unix
from mxdesk.state import Mailbox
from mxdesk.store.decode import without_controls
from mxdesk.store.tickets import Filed

__all__ = ["LmtpHandler", "LmtpSession", "SocketError", "listen_unix"]

log = logging.getLogger("mxdesk.store")

R250_FILED = "250 2.0.0 {queue_id} ticket #{ticket}"
R250_ALREADY_FILED = "250 2.0.0 {queue_id} ticket #{ticket} already stored"
R250_RECIPIENT_OK = "250 2.1.5 OK"
R451_LOCAL_ERROR = "451 4.3.0 Temporary failure in the ticket store, try again later"
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
R550_NO_MAILBOX = "550 5.1.1 <{address}>: no such mailbox"
MAX_ECHOED_ADDRESS = 254
R250_CHUNK = "250 2.0.0 {size} octets received"
R501_BDAT = "501 5.5.4 Syntax: BDAT chunk-size [LAST]"
R503_BDAT_NO_RCPT = "503 5.5.1 Error: need RCPT command"
R503_BDAT_FAILED = "503 5.5.1 Error: an earlier chunk of this message was refused"
R503_DATA_AFTER_BDAT = "503 5.5.1 Error: DATA after BDAT in one transaction"
R552_TOO_BIG = "552 5.3.4 Error: message size exceeds fixed maximum message size"
# RFC 3030 §2: "BDAT" SP chunk-size [ SP end-marker ]; a size beyond 18 digits is not a size.
_BDAT = re.compile(r"(\d{1,18})(?: +(LAST))?", re.IGNORECASE)


class MailboxDirectory(Protocol):
    """Finds the hosted mailbox for a recipient address; may raise on a storage error."""

    def find(self, address: str) -> Mailbox | None: ...


class Filer(Protocol):
    """Files one message for each recipient; None in the result is a temporary failure."""

    async def file(
        self, raw: bytes, envelope_from: str, mailboxes: Sequence[Mailbox]
    ) -> list[Filed | None]: ...


class LmtpEnvelope(Envelope):
    """An envelope that remembers the mailbox each accepted recipient resolved to."""

    def __init__(self) -> None:
        super().__init__()
        self.mailboxes: list[Mailbox] = []


class LmtpHandler:
    """aiosmtpd hooks: RCPT asks the mailbox directory, DATA hands the message to the filer."""

    def __init__(self, mailboxes: MailboxDirectory, filer: Filer, max_recipients: int) -> None:
        self.mailboxes = mailboxes
        self.filer = filer
        self.max_recipients = max_recipients

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, host: str, responses: list[str]
    ) -> list[str]:
        session.host_name = host
        # RFC 2033 §5: an LMTP server must offer both (PIPELINING, ENHANCEDSTATUSCODES); and
        # CHUNKING (RFC 3030), so that a client sends a message with its envelope in one write.
        extended = with_extensions(responses)
        return [*extended[:-1], "250-CHUNKING", extended[-1]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(envelope, LmtpEnvelope)
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

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, LmtpEnvelope)
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

    async def handle_exception(self, error: Exception) -> str:
        log.error("LMTP session error", exc_info=error)
        return R451_LOCAL_ERROR


class LmtpSession(LMTP, BlockDataSMTP):
    """aiosmtpd's LMTP that answers every accepted recipient after DATA, errors included, and
    takes BDAT (RFC 3030)."""

    # The chunks of the message so far; None once one was refused (too big), until the
    # transaction ends. Each connection gets its own (connection_made resets the state).
    _chunks: bytearray | None
    # The gateway writes MAIL, RCPT and BDAT with the message in one go (4 KiB and more).
    reader_limit = DATA_BLOCK

    def __init__(self, handler: LmtpHandler, sessions: set[LmtpSession], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions = sessions
        self.replies_due = 0

    def _create_envelope(self) -> Envelope:
        return LmtpEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if self.replies_due and not text.startswith("354"):
            # After the data, aiosmtpd answers a size or line-length error (and our 451 for an
            # exception) once: RFC 2033 §4.2 wants that answer for each accepted recipient.
            due, self.replies_due = self.replies_due, 0
            if len(text.split("\r\n")) != due:
                text = "\r\n".join([text] * due)
        await super().push(text)
        if text.startswith("354") and self.envelope is not None:
            self.replies_due = len(self.envelope.rcpt_tos)

    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030 CHUNKING: the message in chunks of a stated size, taken as they are (no
        dot-stuffing, no end line). Every chunk is read whole, refused or not, so that what
        follows it is read as the next command; one reply to each chunk, and after the LAST
        one a reply for each accepted recipient (RFC 2033 §4.2), as after DATA's final dot."""
        match = _BDAT.fullmatch(arg or "")
        if match is None:
            # Without a size the chunk's end cannot be found: its bytes would be read as
            # commands. The session ends.
            await self.push(R501_BDAT)
            assert self.transport is not None
            self.transport.close()
            return
        size, last = int(match[1]), match[2] is not None
        refusal = None
        if await self.check_helo_needed():
            refusal = ""  # said by check_helo_needed
        elif self.envelope is None or not self.envelope.rcpt_tos:
            refusal = R503_BDAT_NO_RCPT
        elif self._chunks is None:
            refusal = R503_BDAT_FAILED
        limit = self.data_size_limit or 0
        if refusal is None and limit and len(self._chunks or b"") + size > limit:
            refusal, self._chunks = R552_TOO_BIG, None  # the rest of the message is refused too
        kept = await self._read_chunk(size, keep=refusal is None)
        if refusal in (R552_TOO_BIG, R503_BDAT_FAILED) and last:
            # The end of a message with recipients: each is answered, as after DATA.
            assert self.envelope is not None
            refusal = "\r\n".join([refusal] * len(self.envelope.rcpt_tos))
            self._set_post_data_state()
        if refusal is not None:
            if refusal:
                await self.push(refusal)
            return
        assert self.envelope is not None and self._chunks is not None
        if not last:
            self._chunks += kept
            await self.push(R250_CHUNK.format(size=size))
            return
        content = bytes(self._chunks + kept) if self._chunks else kept
        self._chunks = bytearray()  # whatever the handler does, the next message starts anew
        self.envelope.content = self.envelope.original_content = content
        self.replies_due = len(self.envelope.rcpt_tos)  # for handle_exception's reply
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def smtp_DATA(self, arg: str) -> None:
        if self._chunks or self._chunks is None:
            # RFC 3030 §3: a message is sent with DATA or with BDAT, never both.
            await self.push(R503_DATA_AFTER_BDAT)
            return
        await super().smtp_DATA(arg)

    async def _read_chunk(self, size: int, keep: bool) -> bytes:
        """The next size bytes (b"" when not kept: read in blocks and dropped)."""
        kept = bytearray()
        with self.taking_data():
            while size:
                block = await self._reader.read(min(size, DATA_BLOCK))
                if not block:
                    raise ConnectionResetError("connection closed during BDAT")
                self._reset_timeout()
                size -= len(block)
                if keep:
                    kept += block
        return bytes(kept)

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self._chunks = bytearray()  # after DATA, BDAT LAST, RSET, LHLO and on connecting

    async def handle_exception(self, error: Exception) -> str:
        if self.replies_due:
            self.envelope = self._create_envelope()  # the transaction is over, whatever failed
        return await super().handle_exception(error)


def _printable(text: str) -> str:
    # aiosmtpd keeps undecodable bytes as surrogates; they cannot be encoded in a reply.
    return without_controls(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _reply(result: Filed | None) -> str:
    if result is None:
        return R451_LOCAL_ERROR
    template = R250_ALREADY_FILED if result.duplicate else R250_FILED
    return template.format(queue_id=result.queue_id, ticket=result.ticket)
