"""aiosmtpd made fast for short sessions: DATA read in blocks, sessions copied from a template."""

from __future__ import annotations

import asyncio
import contextlib
import re
import types
from collections.abc import Callable, Iterator
from email._header_value_parser import get_addr_spec, get_angle_addr
from typing import AnyStr, Generic, Protocol, Self, TypeVar

from aiosmtpd.smtp import SMTP

# While a message arrives its reader holds up to twice this before it stops reading the socket;
# a command line keeps aiosmtpd's limit (line_length_limit, 1001 bytes).
DATA_BLOCK = 262144


def with_extensions(responses: list[str]) -> list[str]:
    """aiosmtpd's EHLO/LHLO lines plus PIPELINING (RFC 2920) and ENHANCEDSTATUSCODES (RFC 2034),
    which both the MX and the store honour, less AUTH: aiosmtpd offers it after STARTTLS even
    with nothing to check a password against, and no mxdesk listener takes a login."""
    kept = [line for line in responses[:-1] if not line.startswith("250-AUTH")]
    return [*kept, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]


# <local@domain> with a dot-atom local part (RFC 5321 §4.1.2), then whatever follows: the common
# case, parsed here in microseconds; anything else (quotes, UTF-8, <>) takes aiosmtpd's parser.
_PLAIN_PATH = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>(.*)",
    re.DOTALL,
)


def _encodable(text: str | None) -> bool:
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_path(arg: str, local_part_limit: int = 0) -> tuple[str | None, str | None]:
    """The address of a MAIL or RCPT argument and what follows it (its parameters); None,
    None when it cannot be parsed. aiosmtpd's parser (email's header parser) costs a quarter
    of a millisecond per MAIL or RCPT; a plain <local@domain> gives the same result without
    it."""
    match = _PLAIN_PATH.match(arg)
    rest = match[2].lstrip(" \t") if match else ""
    if match is None or rest.startswith("("):  # a comment: RFC 5322 CFWS, the long way
        if not arg:
            return "", ""
        parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
        try:
            parsed, rest = parse(arg)
            address = parsed.addr_spec
        except Exception:  # HeaderParseError, or the parser on "<" or '"' alone
            return None, None
        if not _encodable(address):
            return None, None
    else:
        address = match[1]
        if not _encodable(address):  # invalid UTF-8 (kept as surrogates): no address
            return None, None
    local = address.rpartition("@")[0]
    if local_part_limit and len(local) > local_part_limit:
        return None, None
    return address, rest


class BlockDataSMTP(SMTP):
    """aiosmtpd's SMTP (and, as a base of LMTP, LMTP) with DATA read in blocks, and the replies
    to pipelined commands sent together."""

    in_data = False
    # The reader's limit between messages (0: the command line limit). A client that pipelines
    # the message behind its commands (LMTP's BDAT) would otherwise stop the socket's reading
    # and restart it for every message; aiosmtpd still answers a long command line with 500.
    reader_limit = 0
    _deadline = 0.0  # loop.time() at which the session times out, unless it moves again
    _held = b""  # 250 replies not sent yet: the client pipelined more commands behind them

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's push, writing less often: the lines of a multi-line reply (EHLO's: eight)
        leave together, and a 250 to a command with another complete command already waiting
        behind it is held and sent with the next reply (RFC 2920 §3.2: a server may group the
        replies of pipelined commands; Postfix flushes only when its input is empty): one
        write instead of three for MAIL, RCPT, DATA. Nothing else waits: a 220 to STARTTLS, a
        354 or an error goes out at once, with what was held."""
        if isinstance(status, str):
            line = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            line = status
        response = line + b"\r\n"
        if line.rpartition(b"\r\n")[2][3:4] == b"-":
            # Not the last line of its reply: aiosmtpd pushes each line of EHLO's on its own.
            self._held += response
            return
        if line[:3] == b"250" and not self.in_data and b"\n" in self._reader._buffer:  # type: ignore[attr-defined]
            self._held += response
            return
        if self._held:
            response, self._held = self._held + response, b""
        self._writer.write(response)
        await self._writer.drain()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The idle timeout starts again (aiosmtpd calls this for every command and block of
        data). aiosmtpd cancelled a timer and made a new one each time; here a session keeps
        one timer, which looks at the deadline when it fires and waits again if it moved."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        self._deadline = deadline
        if handle is not None and not handle.cancelled() and handle.when() <= deadline:
            return  # it fires first, and waits for the rest
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_due)

    def _timeout_due(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_due)
            return
        self._timeout_cb()  # type: ignore[no-untyped-call]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return parse_path(arg, self.local_part_limit)

    def copy(self) -> Self:
        """aiosmtpd's constructor inspects the handler and the class with dir() and inspect on
        every connection, a fifth of the cost of a short session; the result is the same every
        time, so each session starts as a copy of an unconnected one, its methods rebound."""
        session = type(self).__new__(type(self))
        session.__dict__.update(self.__dict__)
        reader = asyncio.StreamReader(
            limit=self.reader_limit or self.line_length_limit, loop=self.loop
        )
        asyncio.StreamReaderProtocol.__init__(
            session, reader, client_connected_cb=session._cb_client_connected, loop=self.loop
        )
        session._smtp_methods = {
            name: types.MethodType(method.__func__, session)
            for name, method in self._smtp_methods.items()
        }
        session._auth_methods = {
            name: attr._replace(
                method=types.MethodType(attr.method.__func__, session)  # type: ignore[attr-defined]
            )
            if attr.is_builtin
            else attr
            for name, attr in self._auth_methods.items()
        }
        return session

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
        with self.taking_data():  # before the 354, so that no data arrives under the line limit
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            content = await self._read_data()
            if content is None:
                await self.push("552 Error: message size exceeds fixed maximum message size")
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    @contextlib.contextmanager
    def taking_data(self) -> Iterator[None]:
        """While a message arrives (DATA, or the store's BDAT chunks): in_data, and the
        reader's limit raised to DATA_BLOCK. The limit is also the reader's flow control: with
        the line limit it stopped and restarted reading the socket (two epoll calls and a turn
        of the loop) for every message of more than 2 KB."""
        reader, line_limit = self._reader, self._reader._limit  # type: ignore[attr-defined]
        reader._limit = max(line_limit, DATA_BLOCK)  # type: ignore[attr-defined]
        self.in_data = True
        try:
            yield
        finally:
            self.in_data = False
            reader._limit = line_limit  # type: ignore[attr-defined]

    async def _read_data(self) -> bytes | None:
        """Reads the message up to the line "." (see MessageData). Returns None when the
        message is larger than the limit."""
        data = MessageData(self.data_size_limit or 0)
        while not data.feed(await self._reader.read(DATA_BLOCK)):
            # A message that keeps coming is not idle: timeouts are per read (RFC 5321
            # §4.5.3.2), so a large message on a slow link is not cut; the session's own
            # time limit still ends a client that trickles.
            self._reset_timeout()
        # Whatever the client pipelined after the final dot is its next command.
        if data.rest:
            self._reader._buffer[:0] = data.rest  # type: ignore[attr-defined]
        return data.content()


class MessageData:
    """The data of a DATA command as it arrives, up to the line "." (RFC 5321 §4.5.2).

    Only CR LF "." CR LF ends the data: a bare LF or CR next to a dot, or a NUL before it, is
    message content, so nothing after it can be read as a second transaction (SMTP
    smuggling). aiosmtpd reads line by line; searching blocks does the same work in a
    fraction of the time. Past the size limit only a tail is kept, until the end.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray(b"\r\n")  # so that a "." on the very first line ends the data
        self._searched = 0
        self._discarded = 0
        self._end = -1
        self.rest = b""  # what came after the final dot: the client's next commands

    def feed(self, chunk: bytes) -> bool:
        """Takes the next block; True once the final dot has come."""
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        buf, limit = self._buf, self._limit
        buf += chunk
        end = buf.find(b"\r\n.\r\n", max(0, self._searched - 4))
        if end >= 0:
            self._end = end
            self.rest = bytes(buf[end + 5 :])
            return True
        if limit and self._discarded + len(buf) - 2 > limit + 3:
            # Too big: keep reading to the end of the data, keeping only a tail.
            self._discarded += len(buf) - 4
            del buf[:-4]
        self._searched = len(buf)
        return False

    def content(self) -> bytes | None:
        """The message with dot-stuffing undone; None when it is larger than the limit."""
        body = bytes(self._buf[2 : self._end + 2])
        if self._discarded or (self._limit and len(body) > self._limit):
            return None
        body = body.replace(b"\r\n.", b"\r\n")
        return body[1:] if body.startswith(b".") else body


class Copyable(Protocol):
    def copy(self) -> Self:
        """A session for a new connection, made from this unconnected one."""
        ...


S = TypeVar("S", bound=Copyable)


class SessionFactory(Generic[S]):
    """Makes a session per connection, copying a template made once (a reload makes a new
    one): an SMTP or LMTP session on aiosmtpd (BlockDataSMTP.copy), or the MX's."""

    def __init__(self, make: Callable[[], S]) -> None:
        self._template = make()

    def renew(self, make: Callable[[], S]) -> None:
        """Sessions from now on copy a new template (a reload); open ones keep theirs."""
        self._template = make()

    def __call__(self) -> S:
        return self._template.copy()
