"""The MX's SMTP session, served from the protocol's callbacks (RFC 5321, 1869, 2920, 3207).

aiosmtpd, which the submission socket and the store still use, runs each session as a task
that awaits every command line on a stream reader, each command a chain of coroutines. On the
MX, where every message is a short session of eight round trips, that machinery cost a fifth
of the gateway's CPU per message. Here the protocol's data_received takes the complete lines
and answers them at once; only what waits for something (the message's commit, the TLS
handshake) runs in a task. The replies are aiosmtpd's, with enhanced status codes (RFC 2034).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from mxdesk.gateway.mx import MxHandler
from mxdesk.gateway.smtp import (
    R421_IDLE,
    R421_SESSION,
    R550_SOURCE_ROUTE,
    ConnectionLimits,
    GatewayEnvelope,
    printable,
    with_enhanced_code,
)
from mxdesk.smtpfast import MessageData, parse_path, with_extensions

log = logging.getLogger("mxdesk.gateway.smtp")

LINE_LIMIT = 1001  # the longest command line read (aiosmtpd's line_length_limit)
COMMAND_LIMIT = 512  # RFC 5321 §4.5.3.1.4; MAIL after EHLO may carry SIZE and SMTPUTF8 too
MAIL_LIMIT = COMMAND_LIMIT + 26 + 10
BACKLOG = 65536  # octets of commands kept while a command waits, before reading stops
OUT_BLOCK = 16384  # replies to pipelined commands sent together, up to this many octets
BOGUS_LIMIT = 5  # unknown commands before the session is ended (aiosmtpd's)
SYNTAX = {
    "DATA": "DATA",
    "EHLO": "EHLO hostname",
    "HELO": "HELO hostname",
    "HELP": "HELP [command]",
    "MAIL": "MAIL FROM: <address>",
    "NOOP": "NOOP [ignored]",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO: <address>",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY <address>",
}
PARAMETERS = " [SP <mail-parameters>]"  # after MAIL's and RCPT's syntax, once EHLO was said
R250_OK = "250 OK"
R503_NO_AUTH = "503 5.5.1 Error: authentication not enabled"


def _params(options: list[str]) -> dict[str, str | bool] | None:
    """ESMTP parameters as a dictionary; None when one is not keyword[=value] (RFC 1869)."""
    result: dict[str, str | bool] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        result[key] = value if eq else True
    return result


class MxSession(asyncio.Protocol):
    """One SMTP session of the MX. What is accepted and how it is kept is the handler's."""

    ident = "mxdesk"

    def __init__(
        self,
        handler: MxHandler,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        *,
        hostname: str,
        tls: ssl.SSLContext | None,
        data_size_limit: int,
        idle_timeout: float,
        session_timeout: float,
    ) -> None:
        self.handler = handler
        self.hostname = hostname
        self.loop = loop
        self._limits = limits
        self._tls = tls
        self._size_limit = data_size_limit
        self._idle = idle_timeout
        self._session_limit = session_timeout
        self.transport: asyncio.Transport | None = None
        self.in_data = False  # from the 354 until the message's reply

    def copy(self) -> MxSession:
        """A session for a new connection, made from this unconnected one."""
        session = MxSession.__new__(MxSession)
        session.__dict__.update(self.__dict__)
        return session

    # -- the connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer
        self.client = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.host_name: str | None = None  # what HELO or EHLO said
        self.extended_smtp = False
        self.ssl: dict[str, Any] | None = None  # after STARTTLS
        self.envelope = GatewayEnvelope()
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        self._data: MessageData | None = None
        self._task: asyncio.Task[None] | None = None  # a command that waits
        self._overlong = False
        self._paused = False
        self._bogus = BOGUS_LIMIT
        self._timer: asyncio.TimerHandle | None = None
        refusal = self._limits.admit(self, self.client)
        if refusal is not None:
            self._limits.refuse(transport, self.client, refusal)
            return
        self.transport = transport
        self._session_end = self.loop.time() + self._session_limit
        self._touch()
        self._reply(f"220 {self.hostname} {self.ident}")
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is None:
            return  # refused
        self._limits.release(self, self.client)
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        self.transport = None

    def eof_received(self) -> bool:
        if self._task is not None:
            self._task.cancel()
        return False  # the transport closes

    def pause_writing(self) -> None:
        """The client does not read its replies: read no more commands until it does."""
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._serve()

    def _end(self, reply: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            log.info("client=%s %s", self.client, reply)
            transport.write(reply.encode() + b"\r\n")
            transport.close()

    def shut_down(self) -> None:
        """Ends the session at daemon shutdown, unless a message is being committed."""
        self._end("421 4.3.2 Error: service shutting down, try again later")

    def _touch(self) -> None:
        """The idle timeout starts again. One timer per session, for the idle timeout and the
        session's time limit, which looks at the deadlines when it fires."""
        self._deadline = min(self.loop.time() + self._idle, self._session_end)
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._due)

    def _due(self) -> None:
        now = self.loop.time()
        if now >= self._session_end:
            self._end(R421_SESSION)
        elif now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._due)
        else:
            self._end(R421_IDLE)

    # -- replies ----------------------------------------------------------------------------

    def _reply(self, status: str, enhanced: bool = True) -> None:
        """Queues a reply; the replies of pipelined commands leave together (RFC 2920 §3.2)."""
        lines = [printable(line) for line in status.split("\r\n")]
        if enhanced:
            lines = [with_enhanced_code(line) for line in lines]
        text = "\r\n".join(lines)
        if text[:1] in ("4", "5"):
            self.handler.log_refusal(self.client, self.envelope, text)
        self.envelope.attempted = ""
        line = text.encode("utf-8", "surrogateescape") + b"\r\n"
        self._out.append(line)
        self._out_size += len(line)

    def _flush(self) -> None:
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))  # may call pause_writing
        self._out.clear()
        self._out_size = 0

    # -- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        if self._data is not None:
            self._touch()  # a message that keeps coming is not idle (RFC 5321 §4.5.3.2)
            if not self._data.feed(data):
                return
            self._message(self._data)
        else:
            self._buffer += data
            if self._task is not None and len(self._buffer) > BACKLOG:
                self.transport.pause_reading()  # until what came is served
        if self._task is None:
            self._serve()

    def _serve(self) -> None:
        """Answers the complete command lines in the buffer, in order, then sends the replies."""
        buffer = self._buffer
        while self._task is None and self._data is None and not self._paused:
            if self.transport is None or self.transport.is_closing():
                return
            end = buffer.find(b"\n")
            if end < 0 or end > LINE_LIMIT:
                if end < 0 and len(buffer) <= LINE_LIMIT:
                    break
                # A line over the limit is read to its end, then answered 500.
                del buffer[: end + 1 if end >= 0 else len(buffer)]
                self._overlong = end < 0
                if end >= 0:
                    self._reply("500 Command line too long")
                continue
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[: end + 1]
            if self._overlong:
                self._overlong = False
                self._reply("500 Command line too long")
                continue
            try:
                self._command(line)
            except Exception as error:
                self._reply(self.handler.exception(error))
            if self._out_size > OUT_BLOCK:
                self._flush()  # a client that does not read pauses this loop
        self._flush()
        transport = self.transport
        if transport is not None and self._task is None and not self._paused:
            transport.resume_reading()

    def _command(self, line: bytes) -> None:
        """One command line, taken as aiosmtpd takes it."""
        if not line:
            self._reply("500 Error: bad syntax")
            return
        verb_bytes, _, arg_bytes = line.partition(b" ")
        try:
            verb = verb_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            self._reply("500 Error: bad syntax")
            return
        arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        limit = MAIL_LIMIT if verb == "MAIL" and self.extended_smtp else COMMAND_LIMIT
        if len(line) > limit:
            self._reply("500 Command line too long")
            return
        method = getattr(self, f"smtp_{verb}", None) if verb in SYNTAX else None
        if verb == "AUTH":
            self._reply(R503_NO_AUTH)  # the MX takes no login, encrypted or not
            return
        if verb == "EXPN":
            self._reply("502 EXPN not implemented")
            return
        if method is None:
            self._bogus -= 1
            if self._bogus < 1:
                self._reply("502 5.5.1 Too many unrecognized commands, goodbye.")
                self._flush()
                assert self.transport is not None
                self.transport.close()
                return
            self._reply(f'500 Error: command "{verb}" not recognized')
            return
        self._touch()
        method(arg)

    # -- commands ---------------------------------------------------------------------------

    def _helo_needed(self) -> bool:
        if not self.host_name:
            self._reply("503 Error: send HELO first")
            return True
        return False

    def smtp_HELO(self, arg: str) -> None:
        if not arg:
            self._reply("501 Syntax: HELO hostname", enhanced=False)
            return
        self.envelope = GatewayEnvelope()
        self.extended_smtp = False
        self.host_name = arg
        self._reply(f"250 {self.hostname}", enhanced=False)

    def smtp_EHLO(self, arg: str) -> None:
        if not arg:
            self._reply("501 Syntax: EHLO hostname", enhanced=False)
            return
        self.envelope = GatewayEnvelope()
        self.extended_smtp = True
        self.host_name = arg
        lines = [f"250-{self.hostname}"]
        if self._size_limit:
            lines.append(f"250-SIZE {self._size_limit}")
        lines += ["250-8BITMIME", "250-SMTPUTF8"]
        if self._tls is not None and self.ssl is None:
            lines.append("250-STARTTLS")
        lines.append("250 HELP")
        self._reply("\r\n".join(with_extensions(lines)), enhanced=False)

    def smtp_NOOP(self, arg: str) -> None:
        self._reply(R250_OK)

    def smtp_RSET(self, arg: str) -> None:
        if arg:
            self._reply("501 Syntax: RSET")
            return
        self.envelope = GatewayEnvelope()
        self._reply(R250_OK)

    def smtp_QUIT(self, arg: str) -> None:
        if arg:
            self._reply("501 Syntax: QUIT")
            return
        self._reply("221 Bye")
        self._flush()
        assert self.transport is not None
        self.transport.close()

    def smtp_HELP(self, arg: str) -> None:
        available = sorted(v for v in SYNTAX if v != "STARTTLS" or self._tls is not None)
        if arg:
            verb = arg.upper()
            if verb in available:
                extra = PARAMETERS if verb in ("MAIL", "RCPT") and self.extended_smtp else ""
                self._reply(f"250 Syntax: {SYNTAX[verb]}{extra}")
                return
        self._reply(f"{501 if arg else 250} Supported commands: {' '.join(available)}")

    def smtp_VRFY(self, arg: str) -> None:
        if not arg:
            self._reply("501 Syntax: VRFY <address>")
        elif parse_path(arg)[0] is None:
            self._reply(f"502 Could not VRFY {arg}")
        else:
            self._reply("252 Cannot VRFY user, but will accept message and attempt delivery")

    def _path(self, arg: str, verb: str, keyword: str) -> tuple[str, list[str]] | None:
        """MAIL's or RCPT's address and parameters; None once the error is answered."""
        syntax = f"501 Syntax: {SYNTAX[verb]}"
        if self.extended_smtp:
            syntax += PARAMETERS
        if arg[: len(keyword)].upper() != keyword:
            self._reply(syntax)
            return None
        address, rest = parse_path(arg[len(keyword) :].strip())
        if address is None or rest is None:
            self._reply("553 5.1.3 Error: malformed address")
            return None
        if not address or (rest and not self.extended_smtp):
            self._reply(syntax)
            return None
        return address, rest.upper().split()

    def smtp_MAIL(self, arg: str) -> None:
        if self._helo_needed():
            return
        path = self._path(arg, "MAIL", "FROM:")
        if path is None:
            return
        address, options = path
        if self.envelope.mail_from:
            self._reply("503 Error: nested MAIL command")
            return
        params = _params(options)
        syntax = f"501 Syntax: {SYNTAX['MAIL']}{PARAMETERS}"
        if params is None:
            self._reply(syntax)
            return
        if params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
            self._reply("501 Error: BODY can only be one of 7BIT, 8BITMIME")
            return
        smtputf8 = params.pop("SMTPUTF8", False)
        if not isinstance(smtputf8, bool):
            self._reply("501 Error: SMTPUTF8 takes no arguments")
            return
        size = params.pop("SIZE", None)
        if size is not None and (isinstance(size, bool) or not size.isdigit()):
            self._reply(syntax)
            return
        if size is not None and self._size_limit and int(size) > self._size_limit:
            self._reply("552 Error: message size exceeds fixed maximum message size")
            return
        if params:
            self._reply("555 MAIL FROM parameters not recognized or not implemented")
            return
        self.envelope.smtp_utf8 = smtputf8
        self._reply(self.handler.mail(self.envelope, address, options))

    def smtp_RCPT(self, arg: str) -> None:
        if self._helo_needed():
            return
        if not self.envelope.mail_from:
            self._reply("503 Error: need MAIL command")
            return
        if arg[:3].upper() == "TO:" and arg[3:].lstrip().startswith("<@"):
            # A source route (<@a,@b:user@c>): aiosmtpd keeps user@c; the MX refuses it.
            self._reply(R550_SOURCE_ROUTE)
            return
        path = self._path(arg, "RCPT", "TO:")
        if path is None:
            return
        address, options = path
        params = _params(options)
        if params is None:
            self._reply(f"501 Syntax: {SYNTAX['RCPT']}{PARAMETERS}")
            return
        if params:
            self._reply("555 RCPT TO parameters not recognized or not implemented")
            return
        self._reply(self.handler.rcpt(self.envelope, address, options))

    def smtp_DATA(self, arg: str) -> None:
        if self._helo_needed():
            return
        if not self.envelope.rcpt_tos:
            self._reply("503 Error: need RCPT command")
            return
        if arg:
            self._reply("501 Syntax: DATA")
            return
        self._reply("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        data = self._data = MessageData(self._size_limit)
        rest = bytes(self._buffer)
        self._buffer.clear()
        if rest and data.feed(rest):  # the client sent the message without waiting
            self._message(data)

    def _message(self, data: MessageData) -> None:
        """The final dot came: the message is answered from a task (its commit waits); the
        caller serves what follows."""
        self._data = None
        self._buffer[:0] = data.rest  # the client's next commands
        content = data.content()
        if content is None:
            self.in_data = False
            self.envelope = GatewayEnvelope()
            self._reply("552 Error: message size exceeds fixed maximum message size")
            return
        self._flush()
        self.envelope.content = self.envelope.original_content = content
        self._task = self.loop.create_task(self._accept(self.envelope))

    async def _accept(self, envelope: GatewayEnvelope) -> None:
        try:
            status = await self.handler.data(self, envelope)
        except Exception as error:
            status = self.handler.exception(error)
        self.in_data = False
        self._task = None
        self.envelope = GatewayEnvelope()
        self._reply(status)
        self._serve()

    def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            self._reply("501 Syntax: STARTTLS")
            return
        if self._tls is None:
            self._reply("454 TLS not available")
            return
        if self.ssl is not None:
            self._reply("554 5.5.1 Error: TLS already active")
            return
        self._reply("220 Ready to start TLS")
        self._flush()
        assert self.transport is not None
        self.transport.pause_reading()  # the handshake's first bytes are the TLS layer's
        self._buffer.clear()  # commands sent behind STARTTLS are not taken (RFC 3207 §4.2)
        self._task = self.loop.create_task(self._handshake(self.transport, self._tls))

    async def _handshake(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            secure = await self.loop.start_tls(transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("client=%s TLS handshake failed: %s", self.client, exc)
            transport.close()
            return
        if secure is None:
            transport.close()
            return
        # RFC 3207 §4.2: the client starts again with EHLO; what it said before is forgotten.
        self.transport = secure
        self.ssl = {"cipher": secure.get_extra_info("cipher")}
        self.host_name = None
        self.extended_smtp = False
        self.envelope = GatewayEnvelope()
        self._task = None
        self._serve()  # what the client sent over TLS while this task waited for its turn
