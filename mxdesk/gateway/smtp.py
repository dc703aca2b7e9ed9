"""What the gateway's SMTP sessions share: connection limits, the envelope, enhanced codes."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mxdesk.gateway.policy import Accept

log = logging.getLogger("mxdesk.gateway.smtp")

R421_TOO_MANY = "421 4.7.0 Error: too many connections, try again later"
R421_TOO_MANY_FROM_YOU = "421 4.7.0 Error: too many connections from your address"
R421_IDLE = "421 4.4.2 Error: timeout exceeded"
R421_SESSION = "421 4.4.2 Error: session time limit exceeded"
R550_SOURCE_ROUTE = "550 5.7.1 Recipient address rejected: source routes are not relayed"
R552_TOO_BIG = "552 5.3.4 Error: message size exceeds fixed maximum message size"

_ENHANCED = re.compile(r"^\d\.\d{1,3}\.\d{1,3}( |$)")
# Enhanced status codes (RFC 3463) for the session's replies written without one (its syntax
# and sequence errors, as aiosmtpd wrote them).
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


class GatewayEnvelope:
    """A transaction's envelope as the commands build it, and where each accepted recipient
    goes."""

    def __init__(self) -> None:
        self.mail_from: str | None = None
        self.mail_options: list[str] = []
        self.smtp_utf8 = False
        self.rcpt_tos: list[str] = []
        self.rcpt_options: list[str] = []
        self.content: bytes | None = None
        self.original_content: bytes | None = None
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


def printable(line: str) -> str:
    if line.isprintable():  # the usual reply (a surrogate escape is not printable)
        return line
    return "".join(
        c if (c.isprintable() or c == " ") and not "\udc80" <= c <= "\udcff" else "?" for c in line
    )
