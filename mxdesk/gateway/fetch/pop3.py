"""A small asyncio POP3 client (RFC 1939, 2449, 2595, 5034) that reads lines of any length."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import socket
import ssl

from mxdesk.gateway.fetch.errors import (
    AuthFailed,
    CommandFailed,
    ConnectionLost,
    FetchError,
    FetchTimeout,
    ProtocolError,
    TlsFailed,
)

CHUNK = 65536
# RFC 2449 §4 allows 512 octets per response line; far more is tolerated, not without bound.
STATUS_LINE_MAX = 65536
# RFC 2449 §4: a command line is at most 255 octets, CRLF included (RFC 5034 §4 for AUTH).
COMMAND_LINE_MAX = 255
HEAD_MAX = 1 << 20  # what TOP may return by default
_STAT = re.compile(r"([0-9]+) ([0-9]+)(?: .*)?")
# RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21-0x7E.
_UIDL_LINE = re.compile(rb"(\d+) +([\x21-\x7e]{1,70}) *\r\n")
# RFC 1939 §5: nothing is required of what follows the size in a scan listing.
_LIST_LINE = re.compile(rb"(\d+) (\d+)(?: [^\r\n]*)?\r\n")


def _reason(error: OSError) -> str:
    """ "connection refused" rather than asyncio's "Connect call failed ('192.0.2.1', 995)"."""
    if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
        return os.strerror(error.errno).lower()
    return str(error.strerror or error)


def _setup_error(where: str, error: OSError, timeout: float) -> FetchError:
    if isinstance(error, ssl.SSLCertVerificationError):
        return TlsFailed(f"{where}: TLS certificate not accepted: {error.verify_message}")
    if isinstance(error, ssl.SSLError):
        return TlsFailed(f"{where}: TLS handshake failed: {error.reason or error}")
    if isinstance(error, TimeoutError):
        return FetchTimeout(f"{where}: no connection within {timeout:g} s")
    return FetchError(f"{where}: {_reason(error)}")


class Pop3Client:
    """One POP3 session. Any failure but -ERR to a command leaves it closed."""

    capabilities: frozenset[str]
    sasl: frozenset[str]

    def __init__(
        self, where: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._where, self._reader, self._writer, self._timeout = where, reader, writer, timeout
        self._buffer, self._closed = bytearray(), False
        self.capabilities = self.sasl = frozenset()

    @classmethod
    async def connect(
        cls, host: str, port: int, security: str, context: ssl.SSLContext | None, timeout: float
    ) -> Pop3Client:
        """Connects, reads the greeting and CAPA; with "starttls", STLS is required."""
        where = f"{host}:{port}"
        if security not in ("ssl", "starttls", "none"):
            raise FetchError(f"{where}: security {security!r}: use ssl, starttls or none")
        implicit = (context or ssl.create_default_context()) if security == "ssl" else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=implicit, server_hostname=host if implicit else None
                )
        except OSError as e:
            raise _setup_error(where, e, timeout) from None
        client = cls(where, reader, writer, timeout)
        try:
            client._parse_status(await client._status_line(), FetchError, "greeting")
            await client._capa()
            if security == "starttls":
                if "STLS" not in client.capabilities:
                    raise FetchError(f"{where}: the server does not offer STLS (RFC 2595)")
                await client._starttls(host, context or ssl.create_default_context())
        except BaseException:
            client.close()
            raise
        return client

    async def login(self, user: str, password: str) -> None:
        """USER and PASS; AUTH PLAIN when the server offers that and not USER."""
        self._check_credentials(user, password)
        if "USER" not in self.capabilities and "PLAIN" in self.sasl:
            await self._sasl("PLAIN", b"\0" + user.encode() + b"\0" + password.encode())
            return
        await self._command(f"USER {user}", AuthFailed, "USER")
        await self._command(f"PASS {password}", AuthFailed, "PASS")

    async def authenticate_xoauth2(self, user: str, token: str) -> None:
        """AUTH XOAUTH2 with an OAuth 2.0 access token (Gmail, Microsoft 365)."""
        self._check_credentials(user, token)
        await self._sasl("XOAUTH2", f"user={user}\x01auth=Bearer {token}\x01\x01".encode())

    async def stat(self) -> tuple[int, int]:
        """The number of messages and their total size in octets."""
        text = await self._command("STAT")
        match = _STAT.fullmatch(text)
        if match is None:
            raise self._protocol_error(f"STAT answered {text[:80]!r}")
        return int(match[1]), int(match[2])

    async def uidl(self) -> dict[int, str]:
        """Message number → unique id; CommandFailed if the server has no UIDL."""
        return {int(m[1]): m[2].decode() for m in await self._listing("UIDL", _UIDL_LINE)}

    async def sizes(self) -> dict[int, int]:
        """Message number → size in octets (LIST)."""
        return {int(m[1]): int(m[2]) for m in await self._listing("LIST", _LIST_LINE)}

    async def retr(self, number: int, max_size: int) -> bytes:
        """The message with CRLF line ends; CommandFailed, session intact, over max_size."""
        return await self._message(f"RETR {number}", number, max_size)

    async def top(self, number: int, lines: int = 0, max_size: int = HEAD_MAX) -> bytes:
        """The header, blank line and first lines of the body (TOP, optional in RFC 1939)."""
        return await self._message(f"TOP {number} {lines}", number, max_size)

    async def dele(self, number: int) -> None:
        """Marks a message deleted; it goes only at a QUIT answered +OK (RFC 1939 §6)."""
        await self._command(f"DELE {number}")

    async def quit(self) -> None:
        """QUIT, which removes the messages marked deleted; CommandFailed if it could not."""
        try:
            await self._command("QUIT")
        finally:
            self.close()

    def close(self) -> None:
        """Drops the connection without QUIT: nothing marked deleted is removed."""
        self._closed = True
        self._writer.transport.abort()

    # -- the wire --------------------------------------------------------------------------

    async def _message(self, command: str, number: int, max_size: int) -> bytes:
        await self._command(command)
        parts: list[bytes] = []
        size = 0
        # Past max_size only the terminator (3 octets) is worth reading whole.
        while (line := await self._readline(max(max_size - size, 0) + 3)) != b".\r\n":
            if line is not None and line.startswith(b"."):  # RFC 1939 §3: byte-stuffed
                line = line[1:]
            size = max_size + 1 if line is None else size + len(line)
            if line is not None and size <= max_size:
                parts.append(line)
        if size > max_size:
            raise CommandFailed(f"{self._where}: message {number} is larger than {max_size} bytes")
        return b"".join(parts)

    async def _starttls(self, host: str, context: ssl.SSLContext) -> None:
        await self._command("STLS", FetchError)
        if self._buffer:  # an answer injected before the handshake (RFC 2595 §4)
            raise self._protocol_error("data after the answer to STLS")
        try:
            async with asyncio.timeout(self._timeout):
                await self._writer.start_tls(context, server_hostname=host)
        except OSError as e:
            raise _setup_error(self._where, e, self._timeout) from None
        await self._capa()  # RFC 2595 §4: forget what was said before TLS

    def _check_credentials(self, user: str, secret: str) -> None:
        if any(c in value for value in (user, secret) for c in "\r\n\0"):
            raise AuthFailed(f"{self._where}: the user name or password holds CR, LF or NUL")

    async def _capa(self) -> None:
        """RFC 2449 CAPA; a server without it has no capabilities we rely on."""
        self.capabilities = self.sasl = frozenset()
        try:
            await self._command("CAPA")
        except CommandFailed:
            return
        tags = [line.decode(errors="replace").split() for line in await self._lines()]
        self.capabilities = frozenset(t[0].upper() for t in tags if t)
        self.sasl = frozenset(
            m.upper() for t in tags if t and t[0].upper() == "SASL" for m in t[1:]
        )

    async def _sasl(self, mechanism: str, response: bytes) -> None:
        """RFC 5034 AUTH, the response after an empty challenge when it would make the command
        line too long. A later challenge is an error report (XOAUTH2): answered with an empty
        line, its text goes into AuthFailed."""
        pending: str | None = base64.b64encode(response).decode()
        if len(f"AUTH {mechanism} {pending}\r\n") <= COMMAND_LINE_MAX:
            self._send(f"AUTH {mechanism} {pending}")
            pending = None
        else:
            self._send(f"AUTH {mechanism}")
        problem = ""
        while (line := await self._status_line()).startswith(b"+ ") or line == b"+\r\n":
            if pending is not None:
                self._send(pending)
                pending = None
                continue
            challenge = line[2:].strip()
            try:
                problem = base64.b64decode(challenge, validate=True).decode(errors="replace")
            except binascii.Error:
                problem = challenge.decode(errors="replace")
            self._send("")
        self._parse_status(line, AuthFailed, f"AUTH {mechanism}", " ".join(problem.split()))

    async def _listing(self, command: str, pattern: re.Pattern[bytes]) -> list[re.Match[bytes]]:
        await self._command(command)
        matches = []
        for line in await self._lines():
            if (match := pattern.fullmatch(line)) is None:
                raise self._protocol_error(f"{command} line {line[:80]!r}")
            matches.append(match)
        return matches

    async def _lines(self) -> list[bytes]:
        """The lines of a multi-line response up to its "." line, unstuffed (RFC 1939 §3)."""
        lines = []
        while (line := await self._status_line()) != b".\r\n":
            lines.append(line[1:] if line.startswith(b".") else line)
        return lines

    async def _command(
        self, line: str, failure: type[FetchError] = CommandFailed, shown: str = ""
    ) -> str:
        """Sends a command, returns the text after +OK; -ERR raises failure. shown replaces
        the command in messages (it may hold a password)."""
        self._send(line)
        return self._parse_status(await self._status_line(), failure, shown or line)

    def _parse_status(
        self, line: bytes, failure: type[FetchError], shown: str, detail: str = ""
    ) -> str:
        status, _, text = line.rstrip(b"\r\n").partition(b" ")
        if status == b"+OK":
            return text.decode(errors="replace")
        if status == b"-ERR":
            extra = f" ({detail})" if detail else ""
            raise failure(f"{self._where}: {shown}: {text.decode(errors='replace')}{extra}")
        raise self._protocol_error(f"{shown} answered {line[:80]!r}")

    def _protocol_error(self, what: str) -> ProtocolError:
        self.close()  # where the next answer starts is unknown now
        return ProtocolError(f"{self._where}: not POP3: {what}")

    def _send(self, line: str) -> None:
        if self._closed:
            raise ConnectionLost(f"{self._where}: the session is closed")
        self._writer.write(line.encode() + b"\r\n")

    async def _status_line(self) -> bytes:
        line = await self._readline(STATUS_LINE_MAX)
        if line is None:
            raise self._protocol_error(f"a response line over {STATUS_LINE_MAX} bytes")
        return line

    async def _readline(self, budget: int) -> bytes | None:
        """The next line ending in CRLF (a bare LF becomes CRLF); None for a line longer than
        budget octets, read to its end and dropped."""
        start, dropped = 0, False
        while (end := self._buffer.find(b"\n", start)) < 0:
            if len(self._buffer) > budget:
                dropped = True
                self._buffer.clear()
            start = len(self._buffer)
            self._buffer += await self._receive()
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        if dropped or len(line) > budget:
            return None
        return line if line.endswith(b"\r\n") else line[:-1] + b"\r\n"

    async def _receive(self) -> bytes:
        """Whatever arrives next: the timeout counts silence, not the length of a response."""
        try:
            async with asyncio.timeout(self._timeout):
                data = await self._reader.read(CHUNK)
        except TimeoutError:
            self.close()
            raise FetchTimeout(f"{self._where}: no data for {self._timeout:g} s") from None
        except OSError as e:
            self.close()
            raise ConnectionLost(f"{self._where}: connection lost: {_reason(e)}") from None
        if not data:
            self.close()
            raise ConnectionLost(f"{self._where}: the server closed the connection")
        return data
