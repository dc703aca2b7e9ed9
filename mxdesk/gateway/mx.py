"""The MX handler: asks the policy about recipients and commits accepted mail to the spool."""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from typing import Any

from mxdesk.gateway.policy import Accept, RecipientPolicy
from mxdesk.gateway.smtp import GatewayEnvelope
from mxdesk.gateway.spool import NewEntry, Recipient, Spool, SpoolError, new_queue_id
from mxdesk.metrics import GatewayMetrics
from mxdesk.smtpfast import with_extensions

log = logging.getLogger("mxdesk.gateway.mx")

R250_RCPT_OK = "250 2.1.5 Ok"
R250_MAIL_OK = "250 2.1.0 Ok"
R452_TOO_MANY_RCPTS = "452 4.5.3 Error: too many recipients"
R451_LOCAL_ERROR = "451 4.3.0 Error: local error in processing, try again later"
INBOUND = "in"


def _client(session: Any) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else "local"


def _clean(text: str, limit: int = 255) -> str:
    """A value from the client, safe to put in a header or a log line."""
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
    lines.append(f"\t{formatdate(localtime=False, usegmt=True)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class MxHandler:
    """aiosmtpd hooks for the MX listener."""

    def __init__(
        self,
        policy: RecipientPolicy,
        spool: Spool,
        host_name: str,
        max_recipients: int,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._metrics = metrics or GatewayMetrics()
        self._policy = policy
        self._spool = spool
        self._host_name = host_name
        self._max_recipients = max_recipients

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return with_extensions(responses)

    async def handle_MAIL(
        self,
        server: Any,
        session: Any,
        envelope: GatewayEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return R250_MAIL_OK

    async def handle_RCPT(
        self,
        server: Any,
        session: Any,
        envelope: GatewayEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
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

    async def handle_DATA(self, server: Any, session: Any, envelope: GatewayEnvelope) -> str:
        queue_id = new_queue_id()
        data = received_header(session, envelope, self._host_name, queue_id)
        data += envelope.original_content or b""
        seen: set[str] = set()
        recipients = []
        for route in envelope.routes:
            # Two addresses that reach one mailbox (suporte@, suporte+x@) make one delivery.
            if route.mailbox not in seen:
                seen.add(route.mailbox)
                recipients.append(Recipient(route.original, route.mailbox, route.tenant))
        # aiosmtpd keeps the null reverse-path (bounces, RFC 5321 §4.5.5) as "<>".
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        entry = NewEntry(queue_id, INBOUND, _client(session), mail_from, tuple(recipients), data)
        try:
            # Shielded: a client that hangs up after the final dot cannot cancel the commit
            # half-way; the transaction happens whole (and the message is delivered) or not.
            await asyncio.shield(self._spool.commit(entry))
        except SpoolError:
            log.error(
                "queue_id=%s client=%s from=<%s> not spooled: storage error",
                queue_id,
                entry.client,
                entry.mail_from,
            )
            return R451_LOCAL_ERROR
        self._metrics.accept("mx")
        log.info(
            "queue_id=%s client=%s from=<%s> to=%s size=%d result=accepted",
            queue_id,
            entry.client,
            _clean(entry.mail_from),
            ",".join(f"<{_clean(r)}>" for r in envelope.rcpt_tos),
            len(data),
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        log.exception("internal error in an SMTP session: %r", error)
        return R451_LOCAL_ERROR

    def log_refusal(self, client: str, envelope: Any, reply: str) -> None:
        self._metrics.refuse("mx", reply)
        rcpts = ",".join(f"<{_clean(r)}>" for r in [*envelope.rcpt_tos, envelope.attempted] if r)
        log.info(
            "client=%s from=<%s> to=%s result=rejected reply=%r",
            client,
            _clean(envelope.mail_from or ""),
            rcpts,
            reply[:200],
        )
