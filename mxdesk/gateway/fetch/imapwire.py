"""The IMAP4rev1 wire (RFC 3501 §4, §7, §9): whole responses read with an inactivity timeout."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from typing import TypeAlias

from mxdesk.gateway.fetch.errors import ConnectionLost, FetchTimeout, ProtocolError, TlsFailed

# An atom or a string (bytes), NIL (None) or a parenthesized list.
Value: TypeAlias = bytes | list["Value"] | None

# A response line outside its literals: a UID SEARCH answer for a million messages fits.
MAX_LINE = 64 * 1024 * 1024
# One literal, a whole message for BODY[]: callers skip bigger mail by its RFC822.SIZE first.
MAX_LITERAL = 256 * 1024 * 1024
READ_SIZE = 256 * 1024

STATUS = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_LITERAL_END = re.compile(rb"\{(\d{1,12})\+?\}\Z")
_LITERAL = re.compile(rb"\{(\d{1,12})\+?\}")
_TAG = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~]+")
_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9.\-]*")
_ATOM_STOP = frozenset(b' ()"{') | frozenset(range(0x20)) | {0x7F}


@dataclass(frozen=True)
class Response:
    """One server response: ``tag`` is "*" (untagged), "+" (continuation) or a command's tag."""

    tag: str
    name: str = ""  # OK NO BAD BYE PREAUTH, or the data's name: CAPABILITY EXISTS FETCH SEARCH …
    number: int | None = None  # "* 3 EXISTS" → 3
    code: str = ""  # "OK [UIDVALIDITY 7] …" → "UIDVALIDITY"
    code_arg: str = ""  # → "7"
    text: str = ""  # the human-readable text of a status or continuation response
    values: list[Value] = field(default_factory=list)  # what follows the name of other responses

    @property
    def status(self) -> str:
        """ "NO [AUTHENTICATIONFAILED] Authentication failed." for error messages."""
        code = " ".join(filter(None, (self.code, self.code_arg)))
        code = f" [{code}]" if code else ""
        return f"{self.name}{code} {self.text}".rstrip()


def _text(data: bytes) -> str:
    """Server text for a one-line message: UTF-8 at best, control characters as '?'."""
    return "".join(c if c.isprintable() else "?" for c in data.decode("utf-8", "replace"))


class _Cursor:
    """Reads values across a response's lines; literal i is the one that ends line i."""

    def __init__(self, lines: list[bytes], literals: list[bytes]) -> None:
        self._lines, self._literals = lines, literals
        self._n = self._pos = 0

    def _peek(self) -> int | None:
        line = self._lines[self._n]
        return line[self._pos] if self._pos < len(line) else None

    def done(self) -> bool:
        return self._n == len(self._lines) - 1 and self._peek() is None

    def word(self) -> bytes:
        line = self._lines[self._n]
        end = line.find(b" ", self._pos)
        end = len(line) if end < 0 else end
        word, self._pos = line[self._pos : end], end
        return word

    def space(self) -> bool:
        """Skips one space; False at the end of the line."""
        if self._peek() == 0x20:
            self._pos += 1
            return True
        if self._peek() is None:
            return False
        raise ValueError("a space is missing")

    def rest(self) -> bytes:
        if self._n != len(self._lines) - 1:
            raise ValueError("a literal in a status response")
        return self._lines[self._n][self._pos :]

    def values(self, closing: int | None = None) -> list[Value]:
        out: list[Value] = []
        while True:
            while self._peek() == 0x20:
                self._pos += 1
            char = self._peek()
            if char is None and closing is None and self.done():
                return out
            if char is not None and char == closing:
                self._pos += 1
                return out
            if char is None:
                raise ValueError("a parenthesized list is not closed")
            out.append(self._value(char))
            if self._peek() not in (None, 0x20, closing):
                raise ValueError("values are not separated by a space")

    def _value(self, char: int) -> Value:
        line = self._lines[self._n]
        if char == 0x28:  # (
            self._pos += 1
            return self.values(closing=0x29)
        if char == 0x22:  # "
            return self._quoted(line)
        if char == 0x7B:  # {
            if not _LITERAL.fullmatch(line, self._pos) or self._n >= len(self._literals):
                raise ValueError("a literal's size is not at the end of the line")
            data = self._literals[self._n]
            self._n, self._pos = self._n + 1, 0
            return data
        start = self._pos
        while self._pos < len(line) and line[self._pos] not in _ATOM_STOP:
            if line[self._pos] == 0x5B:  # "[" of BODY[HEADER.FIELDS (MESSAGE-ID)] up to its "]"
                end = line.find(b"]", self._pos)
                if end < 0:
                    raise ValueError("'[' without ']'")
                self._pos = end
            self._pos += 1
        atom = line[start : self._pos]
        if not atom:
            raise ValueError(f"unexpected {bytes([char])!r}")
        return None if atom.upper() == b"NIL" else atom

    def _quoted(self, line: bytes) -> bytes:
        out = bytearray()
        i = self._pos + 1
        while i < len(line):
            char = line[i]
            if char == 0x22:
                self._pos = i + 1
                return bytes(out)
            if char == 0x5C:  # RFC 3501 §9: only \" and \\ are escapes
                i += 1
                if i == len(line) or line[i] not in b'"\\':
                    raise ValueError("a bad escape in a quoted string")
            out.append(line[i])
            i += 1
        raise ValueError("a quoted string is not closed")


def parse_response(lines: list[bytes], literals: list[bytes]) -> Response:
    """The response made of lines (without CRLF) and the literals that end all but the last;
    ProtocolError if it is not IMAP."""
    try:
        return _parse(lines, literals)
    except (ValueError, IndexError) as e:
        raise ProtocolError(f"cannot parse {_text(lines[0][:80])!r}: {e}") from None


def _parse(lines: list[bytes], literals: list[bytes]) -> Response:
    first = lines[0]
    if first[:1] == b"+":
        if (len(first) > 1 and first[1:2] != b" ") or len(lines) > 1:
            raise ValueError("a bad continuation")
        return Response("+", text=_text(first[2:]))
    cur = _Cursor(lines, literals)
    tag = cur.word()
    if tag != b"*" and not _TAG.fullmatch(tag):
        raise ValueError("not an IMAP response")
    cur.space()
    word = cur.word()
    number = None
    if tag == b"*" and word.isdigit():
        number = int(word)
        cur.space()
        word = cur.word()
    if not _NAME.fullmatch(word):
        raise ValueError("not an IMAP response")
    name = word.decode().upper()
    if name in STATUS and number is None:
        if tag != b"*" and name not in ("OK", "NO", "BAD"):
            raise ValueError(f"{name} with a tag")
        cur.space()
        rest = cur.rest()
        code = arg = b""
        if rest.startswith(b"["):
            end = rest.find(b"]")
            if end < 0:
                raise ValueError("a response code without ']'")
            code, _, arg = rest[1:end].partition(b" ")
            rest = rest[end + 1 :].lstrip(b" ")
        return Response(tag.decode(), name, None, _text(code).upper(), _text(arg), _text(rest))
    if tag != b"*":
        raise ValueError("a tagged response must be OK, NO or BAD")
    cur.space()
    return Response("*", name, number, values=cur.values())


def tls_failed(host: str, error: ssl.SSLError) -> TlsFailed:
    """ "imap.example.com: certificate verify failed: self-signed certificate"."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return TlsFailed(f"{host}: certificate verify failed: {error.verify_message}")
    return TlsFailed(f"{host}: TLS handshake failed: {error.reason or error}")


class ImapStream:
    """One connection: writes bytes, reads whole responses. No byte for ``timeout`` seconds while
    a response is expected is FetchTimeout; any failure closes the connection for good."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, timeout: float
    ) -> None:
        self._reader, self._writer = reader, writer
        self.peer, self.timeout = peer, timeout  # peer: "imap.example.com:993"
        self.doing = "the greeting"  # the command being answered, for error messages
        self.closed = ""  # why the connection is closed, "" while it is open
        self._buf = bytearray()

    def _fail(self, error: type[Exception], why: str) -> Exception:
        self.close(why)
        return error(f"{self.peer}: {why}")

    async def _receive(self, wait: float) -> None:
        """More bytes into the buffer; TimeoutError after wait seconds without any."""
        if self.closed:
            raise ConnectionLost(f"{self.peer}: connection closed ({self.closed})")
        try:
            async with asyncio.timeout(wait):
                chunk = await self._reader.read(READ_SIZE)
        except TimeoutError:
            raise
        except OSError as e:
            raise self._fail(ConnectionLost, f"connection lost during {self.doing}: {e}") from None
        if not chunk:
            raise self._fail(ConnectionLost, f"the server closed the connection ({self.doing})")
        self._buf += chunk

    async def _fill(self) -> None:
        try:
            await self._receive(self.timeout)
        except TimeoutError:
            why = f"no answer to {self.doing} for {self.timeout:g}s"
            raise self._fail(FetchTimeout, why) from None

    async def _line(self) -> bytes:
        start = 0
        while (end := self._buf.find(b"\r\n", start)) < 0:
            if len(self._buf) > MAX_LINE:
                raise self._fail(ProtocolError, f"a response line over {MAX_LINE} bytes")
            start = max(0, len(self._buf) - 1)
            await self._fill()
        if end > MAX_LINE:
            raise self._fail(ProtocolError, f"a response line over {MAX_LINE} bytes")
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    async def read(self) -> Response:
        """The next response, literals included."""
        lines: list[bytes] = []
        literals: list[bytes] = []
        while True:
            lines.append(await self._line())
            match = _LITERAL_END.search(lines[-1])
            if match is None:
                break
            size = int(match[1])
            if size > MAX_LITERAL:
                raise self._fail(ProtocolError, f"a literal of {size} bytes (over {MAX_LITERAL})")
            while len(self._buf) < size:
                await self._fill()
            literals.append(bytes(self._buf[:size]))
            del self._buf[:size]
        try:
            return parse_response(lines, literals)
        except ProtocolError as e:
            raise self._fail(ProtocolError, str(e)) from None

    async def read_within(self, wait: float) -> Response | None:
        """The next response, or None when not one byte of it comes within wait seconds;
        once it has begun, the rest is read with the normal inactivity timeout."""
        if not self._buf:
            try:
                await self._receive(max(wait, 0.0))
            except TimeoutError:
                return None
        return await self.read()

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionLost(f"{self.peer}: connection closed ({self.closed})")
        try:
            self._writer.write(data)
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError:
            raise self._fail(
                FetchTimeout, f"cannot send {self.doing} for {self.timeout:g}s"
            ) from None
        except OSError as e:
            raise self._fail(ConnectionLost, f"connection lost sending {self.doing}: {e}") from None

    async def start_tls(self, context: ssl.SSLContext, host: str) -> None:
        # Bytes after the STARTTLS answer would pass as TLS-protected: a known injection.
        if self._buf:
            raise self._fail(ProtocolError, "data after the answer to STARTTLS")
        try:
            await self._writer.start_tls(
                context, server_hostname=host, ssl_handshake_timeout=self.timeout
            )
        except ssl.SSLError as e:
            self.close("TLS failed")
            raise tls_failed(host, e) from None
        except TimeoutError:
            raise self._fail(FetchTimeout, f"no TLS handshake within {self.timeout:g}s") from None
        except OSError as e:
            raise self._fail(ConnectionLost, f"connection lost during STARTTLS: {e}") from None

    def close(self, why: str = "closed by the client") -> None:
        """Aborts the connection; never raises."""
        if not self.closed:
            self.closed = why
        self._buf.clear()
        with contextlib.suppress(Exception):
            self._writer.transport.abort()
