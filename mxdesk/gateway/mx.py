"""The MX handler: asks the policy about recipients and commits accepted mail to the spool."""

from __future__ import annotations

import logging
from typing import Any

from mxdesk.gateway.authresults import strip_ours
from mxdesk.gateway.diskspace import SpaceReserve, declared_size
from mxdesk.gateway.entries import INBOUND as INBOUND
from mxdesk.gateway.inboundauth import InboundVerifier
from mxdesk.gateway.policy import Accept, RecipientPolicy
from mxdesk.gateway.smtp import GatewayEnvelope
from mxdesk.gateway.spool import NewEntry, Recipient, Spool, SpoolError, new_queue_id
from mxdesk.gateway.verdicts import Envelope
from mxdesk.metrics import GatewayMetrics
from mxdesk.timefmt import header_date

log = logging.getLogger("mxdesk.gateway.mx")

R250_RCPT_OK = "250 2.1.5 Ok"
R250_MAIL_OK = "250 2.1.0 Ok"
R452_TOO_MANY_RCPTS = "452 4.5.3 Error: too many recipients"
R452_NO_SPACE = "452 4.3.1 Error: insufficient system storage, try again later"
R451_LOCAL_ERROR = "451 4.3.0 Error: local error in processing, try again later"


def _client(session: Any) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else "local"


def _clean(text: str, limit: int = 255) -> str:
    """A value from the client, safe to put in a header or a log line."""
    if text.isprintable():
        return text[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def received_header(
    session: Any, envelope: GatewayEnvelope, host_name: str, queue_id: str
) -> bytes:
    """The trace header of RFC 5321 §4.4, with the protocol name of RFC 3848."""
    helo = _clean(session.host_name or "unknown", 100)
    proto = "ESMTP" if session.extended_smtp else "SMTP"
    if session.ssl is not None:
        proto += "S"
    if envelope.smtp_utf8:
        proto = "UTF8" + proto
    client = _client(session)
    lines = [
        f"Received: from {helo} ([{client}])",
        f"\tby {host_name} (mxdesk) with {proto} id {queue_id}",
    ]
    if len(envelope.rcpt_tos) == 1:
        lines.append(f"\tfor <{_clean(envelope.rcpt_tos[0])}>")
    lines[-1] += ";"
    lines.append(f"\t{header_date()}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class MxHandler:
    """What the MX's sessions (mxdesk/gateway/smtpsession.py) ask: may this sender and this
    recipient come in, and the message kept."""

    def __init__(
        self,
        policy: RecipientPolicy,
        spool: Spool,
        host_name: str,
        max_recipients: int,
        metrics: GatewayMetrics | None = None,
        min_free_mb: int = 0,
        verifier: InboundVerifier | None = None,
    ) -> None:
        """min_free_mb: the free space (MiB) the spool's filesystem keeps; 0: no reserve.
        verifier: SPF, DKIM, DMARC and ARC verdicts of each message (None: not checked)."""
        self._metrics = metrics or GatewayMetrics()
        self._verifier = verifier
        self._space = SpaceReserve(spool.path.parent, min_free_mb)
        self._policy = policy
        self._spool = spool
        self._host_name = host_name
        self._max_recipients = max_recipients

    def mail(
        self, session: Any, envelope: GatewayEnvelope, address: str, mail_options: list[str]
    ) -> str:
        """MAIL FROM, its syntax checked: the reply."""
        if self._space.low(declared_size(mail_options)):
            return R452_NO_SPACE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return R250_MAIL_OK

    def rcpt(
        self, session: Any, envelope: GatewayEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        """RCPT TO, its syntax checked: the recipient policy's reply."""
        envelope.attempted = address
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return R452_TOO_MANY_RCPTS
        decision = self._policy.check(address)
        if not isinstance(decision, Accept):
            return decision.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.routes.append(decision)
        return R250_RCPT_OK

    async def _authenticate(
        self, session: Any, content: bytes, mail_from: str, queue_id: str
    ) -> tuple[bytes, str | None, str]:
        """Our Authentication-Results header for the message as received, the reply that
        refuses it ([gateway.inbound_auth]; None: accept) and the verdicts for the log line."""
        if self._verifier is None:
            return b"", None, ""
        peer = session.peer
        client_ip = str(peer[0]) if isinstance(peer, tuple) else None
        envelope = Envelope(client_ip, mail_from, session.host_name or "")
        checked = await self._verifier.check(content, envelope)
        reply = self._verifier.refusal(checked.verdicts)
        summary = checked.verdicts.summary()
        if reply:
            log.info(
                "queue_id=%s client=%s from=<%s> result=rejected reply=%s %s",
                queue_id,
                _client(session),
                _clean(mail_from),
                reply[:3],
                summary,
            )
        return checked.header, reply, summary

    async def data(self, session: Any, envelope: GatewayEnvelope) -> str:
        """The message after the final dot: verdicts, trace headers, the commit; the reply."""
        queue_id = new_queue_id()
        content = envelope.original_content or b""
        # The session keeps the null reverse-path (bounces, RFC 5321 §4.5.5) as "<>".
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        auth, refused, verdicts = await self._authenticate(session, content, mail_from, queue_id)
        if refused is not None:
            return refused
        # Ours above our Received: every Authentication-Results field above it is ours, each
        # one below came from outside; one that claims our name is removed (RFC 8601 §5).
        data = auth + received_header(session, envelope, self._host_name, queue_id)
        data += strip_ours(content, self._host_name)
        seen: set[str] = set()
        recipients = []
        for route in envelope.routes:
            # Two addresses that reach one mailbox (suporte@, suporte+x@) make one delivery.
            if route.mailbox not in seen:
                seen.add(route.mailbox)
                recipients.append(Recipient(route.original, route.mailbox, route.tenant))
        entry = NewEntry(queue_id, INBOUND, _client(session), mail_from, tuple(recipients), data)
        try:
            # A client that hangs up after the final dot cannot cancel the commit half-way:
            # once queued, the transaction happens whole (and the message is delivered) or not.
            await self._spool.commit(entry)
        except SpoolError:
            log.error(
                "queue_id=%s client=%s from=<%s> not spooled: storage error",
                queue_id,
                entry.client,
                entry.mail_from,
            )
            return R451_LOCAL_ERROR
        self._metrics.accept("mx")
        # One line per accepted message: the envelope, the verdicts, the queue id.
        log.info(
            "queue_id=%s client=%s from=<%s> to=%s size=%d %sresult=accepted",
            queue_id,
            entry.client,
            _clean(entry.mail_from),
            ",".join(f"<{_clean(r)}>" for r in envelope.rcpt_tos),
            len(data),
            f"{verdicts} " if verdicts else "",
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def exception(self, error: Exception) -> str:
        log.exception("internal error in an SMTP session: %r", error)
        return R451_LOCAL_ERROR

    def log_refusal(self, client: str, envelope: Any, reply: str) -> None:
        self._metrics.refuse("mx", reply)
        # A refused RCPT names the refused recipient only (as Postfix's reject lines do): with
        # the accepted ones too, the line read as the whole message refused.
        refused = [envelope.attempted] if envelope.attempted else envelope.rcpt_tos
        rcpts = ",".join(f"<{_clean(r)}>" for r in refused)
        log.info(
            "client=%s from=<%s> to=%s result=rejected reply=%r",
            client,
            _clean(envelope.mail_from or ""),
            rcpts,
            reply[:200],
        )
