"""The SMTP protocol object: aiosmtpd plus connection limits, session timers and enhanced codes."""

from __future__ import annotations

import asyncio
import logging
import re
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope

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
    if code == "552" and "size" not in text.lower() and "data" not in text.lower():
        return line
    return f"{code}{sep or ' '}{_DEFAULT_ENHANCED[code]} {text}"


class GatewayEnvelope(Envelope):
    """An envelope that also remembers where each accepted recipient goes."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[Any] = []
        self.attempted = ""


@dataclass
class ConnectionLimits:
    """Counts open sessions in total and per client address."""

    total: int
    per_client: int
    open: Counter[str] = field(default_factory=Counter)
    sessions: set[GatewaySMTP] = field(default_factory=set)

    def admit(self, client: str) -> str | None:
        if sum(self.open.values()) >= self.total:
            return R421_TOO_MANY
        if self.open[client] >= self.per_client:
            return R421_TOO_MANY_FROM_YOU
        self.open[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class GatewaySMTP(SMTP):
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
        self.in_data = False

    # -- connection accounting -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # the TLS layer after STARTTLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else "local"
        refusal = self._limits.admit(self._client)
        if refusal is not None:
            self._refused = True
            log.warning("client=%s refused: %s", self._client, refusal)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        self._limits.sessions.add(self)
        self._session_timer = self.loop.call_later(
            self._session_timeout, self._end_session, R421_SESSION
        )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self in self._limits.sessions:
            self._limits.sessions.discard(self)
            self._limits.release(self._client)
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

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        try:
            content = await self._read_data()
            if content is None:
                await self.push("552 Error: message size exceeds fixed maximum message size")
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        finally:
            self.in_data = False
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def _read_data(self) -> bytes | None:
        """Reads the message up to the line "." and undoes dot-stuffing (RFC 5321 §4.5.2).

        Only CR LF "." CR LF ends the data: a bare LF or CR next to a dot, or a NUL before it,
        is message content, so nothing after it can be read as a second transaction (SMTP
        smuggling). aiosmtpd reads line by line; reading in blocks does the same work in a
        fraction of the time. Returns None when the message is larger than the limit.
        """
        limit = self.data_size_limit or 0
        buf = bytearray(b"\r\n")  # so that a "." on the very first line ends the data
        searched = 0
        discarded = 0
        while True:
            end = buf.find(b"\r\n.\r\n", max(0, searched - 4))
            if end >= 0:
                break
            if limit and discarded + len(buf) - 2 > limit + 3:
                # Too big: keep reading to the end of the data, keeping only a tail.
                discarded += len(buf) - 4
                del buf[:-4]
            searched = len(buf)
            chunk = await self._reader.read(65536)
            if not chunk:
                raise ConnectionResetError("connection closed during DATA")
            buf += chunk
        # Whatever the client pipelined after the final dot is its next command.
        rest = bytes(buf[end + 5 :])
        if rest:
            self._reader._buffer[:0] = rest  # type: ignore[attr-defined]
        body = bytes(buf[2 : end + 2])
        if discarded or (limit and len(body) > limit):
            return None
        body = body.replace(b"\r\n.", b"\r\n")
        return body[1:] if body.startswith(b".") else body

    async def smtp_RCPT(self, arg: str | None) -> None:
        # aiosmtpd drops a source route (<@a,@b:user@c>) and keeps user@c; we refuse it.
        rest = (arg or "")[3:].lstrip() if (arg or "")[:3].upper() == "TO:" else ""
        if rest.startswith("<@") and self.envelope is not None and self.envelope.mail_from:
            await self.push(R550_SOURCE_ROUTE)
            return
        await super().smtp_RCPT(arg)

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()


class SessionFactory:
    """Makes a GatewaySMTP per connection, copying a template made once.

    aiosmtpd's constructor inspects the handler and the class with dir() and inspect on every
    connection, a fifth of the cost of a short session; the result is the same every time, so
    each session starts as a copy of an unconnected template with its methods rebound.
    """

    def __init__(self, make: Callable[[], GatewaySMTP]) -> None:
        self._template = make()

    def __call__(self) -> GatewaySMTP:
        t = self._template
        session = GatewaySMTP.__new__(GatewaySMTP)
        session.__dict__.update(t.__dict__)
        reader = asyncio.StreamReader(limit=t.line_length_limit, loop=t.loop)
        asyncio.StreamReaderProtocol.__init__(
            session, reader, client_connected_cb=session._cb_client_connected, loop=t.loop
        )
        session._smtp_methods = {
            name: types.MethodType(method.__func__, session)
            for name, method in t._smtp_methods.items()
        }
        session._auth_methods = {
            name: attr._replace(
                method=types.MethodType(attr.method.__func__, session)  # type: ignore[attr-defined]
            )
            if attr.is_builtin
            else attr
            for name, attr in t._auth_methods.items()
        }
        return session
