"""What the SMTP and LMTP sessions share: DATA read in blocks, the address parser, templates."""

from __future__ import annotations

import re
from collections.abc import Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from typing import Generic, Protocol, Self, TypeVar

# <local@domain> with a dot-atom local part (RFC 5321 §4.1.2), then whatever follows: the common
# case, parsed here in microseconds; anything else (quotes, UTF-8, <>) takes email's header
# parser, as aiosmtpd does.
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
    one): the MX's, the submission socket's and the store's LMTP sessions."""

    def __init__(self, make: Callable[[], S]) -> None:
        self._template = make()

    def renew(self, make: Callable[[], S]) -> None:
        """Sessions from now on copy a new template (a reload); open ones keep theirs."""
        self._template = make()

    def __call__(self) -> S:
        return self._template.copy()
