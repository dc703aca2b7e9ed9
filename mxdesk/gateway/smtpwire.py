"""The reading and writing of an SMTP or LMTP session, served from the protocol's callbacks.

aiosmtpd, which served these sessions before, runs each session as a task that awaits every
command line on a stream reader, each command a chain of coroutines. On the MX, where every
message is a short session of eight round trips, that machinery cost a fifth of the gateway's
CPU per message. Here data_received takes the complete lines and answers them at once; only
what waits for something (the message's commit, the TLS handshake) runs in a task. What the
commands do is mxdesk/gateway/smtpsession.py's (the store's LMTP: mxdesk/store/lmtp.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol, Self

from mxdesk.gateway.smtp import (
    R421_IDLE,
    R421_SESSION,
    R552_TOO_BIG,
    ConnectionLimits,
    GatewayEnvelope,
    printable,
    with_enhanced_code,
)
from mxdesk.smtpfast import MessageData

log = logging.getLogger("mxdesk.gateway.smtp")

LINE_LIMIT = 1001  # the longest command line read (aiosmtpd's line_length_limit)
BACKLOG = 65536  # octets of commands kept while a command waits, before reading stops
OUT_BLOCK = 16384  # replies to pipelined commands sent together, up to this many octets


class Chunk:
    """A BDAT chunk as it arrives (RFC 3030): size octets taken as they are, kept or dropped."""

    def __init__(self, size: int, keep: bool, then: Callable[[bytes], None]) -> None:
        self.left = size
        self.keep = keep
        self.then = then  # called with the chunk (b"" when dropped) once it is whole
        self.parts: list[bytes] = []  # one, without a copy, when it came in one read

    def feed(self, data: bytes) -> bytes:
        """Takes what belongs to the chunk; returns what follows it."""
        taken = data[: self.left]
        self.left -= len(taken)
        if self.keep and taken:
            self.parts.append(taken)
        return data[len(taken) :]


class Handler(Protocol):
    """What a listener's sessions ask: may this sender and this recipient come in, and the
    message kept (mxdesk/gateway/mx.py for the MX, submission.py for the submission socket)."""

    def mail(self, session: Any, envelope: Any, address: str, options: list[str]) -> str: ...

    def rcpt(self, session: Any, envelope: Any, address: str, options: list[str]) -> str: ...

    async def data(self, session: Any, envelope: Any) -> str: ...

    def exception(self, error: Exception) -> str: ...

    def log_refusal(self, client: str, envelope: Any, reply: str) -> None: ...


class SmtpWire(asyncio.Protocol):
    """A session's connection: lines in, replies out, timers, a command that waits."""

    ident = "mxdesk"

    def __init__(
        self,
        handler: Handler,
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

    def copy(self) -> Self:
        """A session for a new connection, made from this unconnected one."""
        session = type(self).__new__(type(self))
        session.__dict__.update(self.__dict__)
        return session

    def new_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    def _command(self, line: bytes) -> None:
        raise NotImplementedError

    # -- the connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer
        self.client = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.host_name: str | None = None  # what HELO or EHLO said
        self.extended_smtp = False
        self.ssl: dict[str, Any] | None = None  # after STARTTLS
        self.envelope = self.new_envelope()
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        self._data: MessageData | None = None
        self._chunk: Chunk | None = None  # a BDAT chunk being read
        self._task: asyncio.Task[None] | None = None  # a command that waits
        self._overlong = False
        self._paused = False
        self._eof = False  # the client shut its side after sending a message
        self._timer: asyncio.TimerHandle | None = None
        self.met(transport)
        refusal = self._limits.admit(self, self.client)
        if refusal is not None:
            self._limits.refuse(transport, self.client, refusal)
            return
        self.transport = transport
        self._session_end = self.loop.time() + self._session_limit
        self._touch()
        self._reply(f"220 {self.hostname} {self.ident}")
        self._flush()

    def met(self, transport: asyncio.Transport) -> None:
        """Learns what it needs of the peer before the session is admitted."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is None:
            return  # refused
        self._limits.release(self, self.client)
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        self.transport = None

    def eof_received(self) -> bool:
        """The client sent all it will send. A message it sent whole is still answered, and
        the commands behind it, before the session closes (a client that shut its sending
        side after the final dot must not send the message again for want of a reply); TLS
        cannot stay half open."""
        if self._task is None or self.ssl is not None:
            if self._task is not None:
                self._task.cancel()
            return False  # the transport closes
        self._eof = True
        return True

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
        elif self._chunk is not None:
            self._touch()
            self._chunk_fed(data)
        else:
            self._buffer += data
            if self._task is not None and len(self._buffer) > BACKLOG:
                self.transport.pause_reading()  # until what came is served
        if self._task is None:
            self._serve()

    def _serve(self) -> None:
        """Answers the complete command lines in the buffer, in order, then sends the replies."""
        buffer = self._buffer
        while (
            self._task is None and self._data is None and self._chunk is None and not self._paused
        ):
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
        if self._task is None:
            # Else the replies so far leave with the reply of the command that waits (RFC
            # 2920 §3.2): LMTP's MAIL, RCPT and BDAT, pipelined, are answered in one write.
            self._flush()
        transport = self.transport
        waiting = self._task is not None or self._chunk is not None
        if transport is not None and not waiting and not self._paused:
            if self._eof:
                transport.close()  # all it sent is answered
            else:
                transport.resume_reading()

    def _read_chunk(self, size: int, keep: bool, then: Callable[[bytes], None]) -> None:
        """The next size octets are a BDAT chunk, not commands: then(chunk) once they are
        read (b"" if not kept), at once when the client sent them with the command."""
        self._chunk = Chunk(size, keep, then)
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._chunk_fed(rest)

    def _chunk_fed(self, data: bytes) -> None:
        chunk = self._chunk
        assert chunk is not None
        rest = chunk.feed(data)
        if chunk.left:
            return
        self._chunk = None
        self._buffer[:0] = rest  # the client's next commands
        chunk.then(b"".join(chunk.parts))

    def _after_message(self, status: str, envelope: GatewayEnvelope) -> str:
        """The reply to a whole message (LMTP: one line for each recipient, RFC 2033 §4.2)."""
        return status

    # -- the message, TLS ----------------------------------------------------------------------

    def _message(self, data: MessageData) -> None:
        """The final dot came: the message is answered from a task (its commit waits); the
        caller serves what follows."""
        self._data = None
        self._buffer[:0] = data.rest  # the client's next commands
        content = data.content()
        if content is None:
            self._refuse_message(R552_TOO_BIG)
        else:
            self._take_message(content)

    def _take_message(self, content: bytes) -> None:
        """The whole message (after DATA's dot or BDAT's LAST chunk) goes to the handler, from
        a task; the replies queued so far leave with its reply."""
        envelope = self.envelope
        envelope.content = envelope.original_content = content
        self.in_data = True
        self._task = self.loop.create_task(self._accept(envelope))

    def _refuse_message(self, refusal: str) -> None:
        """The whole message is refused; the transaction is over."""
        self.in_data = False
        reply = self._after_message(refusal, self.envelope)
        self.envelope = self.new_envelope()
        self._reply(reply)

    async def _accept(self, envelope: GatewayEnvelope) -> None:
        try:
            status = await self.handler.data(self, envelope)
        except Exception as error:
            status = self._after_message(self.handler.exception(error), envelope)
        self.in_data = False
        self._task = None
        self.envelope = self.new_envelope()
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
        self.envelope = self.new_envelope()
        self._task = None
        self._serve()  # what the client sent over TLS while this task waited for its turn
