"""The SMTP protocol object: aiosmtpd plus connection limits, session timers and enhanced codes."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import Envelope

from mxdesk.gateway.policy import Accept
from mxdesk.smtpfast import BlockDataSMTP

log = logging.getLogger("mxdesk.gateway.smtp")

R421_TOO_MANY = "421 4.7.0 Error: too many connections, try again later"
R421_TOO_MANY_FROM_YOU = "421 4.7.0 Error: too many connections from your address"
R421_IDLE = "421 4.4.2 Error: timeout exceeded"
R421_SESSION = "421 4.4.2 Error: session time limit exceeded"
R550_SOURCE_ROUTE = "550 5.7.1 Recipient address rejected: source routes are not relayed"

_ENHANCED = re.compile(r"^\d\.\d{1,3}\.\d{1,3}( |$)")
# Enhanced status codes (RFC 3463) for the replies aiosmtpd writes itself.
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "250": "2.0.0",
    "214": "2.0.0",
    "252": "2.0.0",
    "421": "4.4.2",
    "451": "4.3.0",
    "452": "4.5.3",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.7.1",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.6.0",
    "555": "5.5.4",
}
_NO_ENHANCED = {"220", "334", "354"}


def with_enhanced_code(line: str) -> str:
    """Adds an RFC 3463 code to a reply that lacks one (RFC 2034 §3)."""
    code, sep, text = line[:3], line[3:4], line[4:]
    if code in _NO_ENHANCED or _ENHANCED.match(text) or code not in _DEFAULT_ENHANCED:
        return line
    return f"{code}{sep or ' '}{_DEFAULT_ENHANCED[code]} {text}"


class GatewayEnvelope(Envelope):
    """An envelope that also remembers where each accepted recipient goes."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[Accept] = []
        self.attempted = ""


@dataclass
class ConnectionLimits:
    """Counts open sessions in total and per client address."""

    total: int
    per_client: int
    open: Counter[str] = field(default_factory=Counter)
    # The sessions served here; with listener processes, the connections handed to them.
    sessions: set[Any] = field(default_factory=set)
    on_refusal: Callable[[str], None] | None = None  # told each refusal (the metrics)

    def admit(self, session: object, client: str) -> str | None:
        """Counts the session in, or returns the 421 that refuses it."""
        if len(self.sessions) >= self.total:
            return R421_TOO_MANY
        if self.open[client] >= self.per_client:
            return R421_TOO_MANY_FROM_YOU
        self.sessions.add(session)
        self.open[client] += 1
        return None

    def refuse(self, transport: asyncio.BaseTransport, client: str, reply: str) -> None:
        """Answers a connection that was not admitted (its 421) and closes it."""
        log.warning("client=%s refused: %s", client, reply)
        if self.on_refusal is not None:
            self.on_refusal(reply)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode() + b"\r\n")
        transport.close()

    def release(self, session: object, client: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class GatewaySMTP(BlockDataSMTP):
    """One SMTP session. Policy and storage decisions belong to the handler."""

    def __init__(
        self, handler: Any, *, limits: ConnectionLimits, session_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._session_timeout = session_timeout
        self._session_timer: asyncio.TimerHandle | None = None
        self._client = ""
        self._refused = False
        self._greeting_phase = False

    # -- connection accounting -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # the TLS layer after STARTTLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else "local"
        refusal = self._limits.admit(self, self._client)
        if refusal is not None:
            self._refused = True
            self._limits.refuse(transport, self._client, refusal)
            return
        self._session_timer = self.loop.call_later(
            self._session_timeout, self._end_session, R421_SESSION
        )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._limits.release(self, self._client)
        if self._session_timer is not None:
            self._session_timer.cancel()
        super().connection_lost(error)

    def _end_session(self, reply: str) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            log.info("client=%s %s", self._client, reply)
            transport.write(reply.encode() + b"\r\n")
            transport.close()

    def _timeout_cb(self) -> None:
        # aiosmtpd closes an idle session silently; RFC 5321 §4.2 prefers a 421 first.
        self._end_session(R421_IDLE)

    def shut_down(self) -> None:
        """Ends a session at daemon shutdown, unless a message is being committed."""
        self._end_session("421 4.3.2 Error: service shutting down, try again later")

    # -- replies ---------------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        # aiosmtpd echoes what the client sent ("command … not recognized"): never raw control
        # characters or undecodable bytes back on the wire.
        status = "\r\n".join(printable(line) for line in status.split("\r\n"))
        if not self._greeting_phase:
            status = "\r\n".join(with_enhanced_code(line) for line in status.split("\r\n"))
        if status[:1] in ("4", "5") and self.envelope is not None:
            self.event_handler.log_refusal(self._client, self.envelope, status)
        if isinstance(self.envelope, GatewayEnvelope):
            self.envelope.attempted = ""
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._greeting_phase = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._greeting_phase = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._greeting_phase = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._greeting_phase = False

    async def smtp_RCPT(self, arg: str | None) -> None:
        # aiosmtpd drops a source route (<@a,@b:user@c>) and keeps user@c; we refuse it.
        rest = (arg or "")[3:].lstrip() if (arg or "")[:3].upper() == "TO:" else ""
        if rest.startswith("<@") and self.envelope is not None and self.envelope.mail_from:
            await self.push(R550_SOURCE_ROUTE)
            return
        await super().smtp_RCPT(arg)

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()


def printable(line: str) -> str:
    if line.isprintable():  # the usual reply (a surrogate escape is not printable)
        return line
    return "".join(
        c if (c.isprintable() or c == " ") and not "\udc80" <= c <= "\udcff" else "?" for c in line
    )
