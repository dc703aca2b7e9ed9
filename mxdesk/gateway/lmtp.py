"""An LMTP client over a Unix socket (RFC 2033): one reply per recipient after DATA or BDAT."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mxdesk.gateway.dkim import normalise_line_endings

MAX_REPLY_LINES = 100
MAX_LINE = 4096
# The store closes sessions idle for 300 s (mxdesk/store/lmtp.py); ours are dropped well before.
IDLE_SECONDS = 60.0


class LmtpError(Exception):
    """The conversation failed before per-recipient results were known (temporary)."""


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def dot_stuff(data: bytes) -> bytes:
    """Normalises line endings to CRLF, doubles leading dots and adds the final dot (RFC 5321
    §4.5.2). Bare CR and LF become CRLF so no line ending can be read as the end of data."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        # CRLF throughout (what the spool holds): the same, without splitting every line.
        out = data.replace(b"\r\n.", b"\r\n..")
        if out.startswith(b"."):
            out = b"." + out
        if out and not out.endswith(b"\r\n"):
            out += b"\r\n"
        return out + b".\r\n"
    return _dot_stuff_lines(data)


def _dot_stuff_lines(data: bytes) -> bytes:
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines and lines[-1] == b"":
        lines.pop()
    out = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return out + (b"\r\n" if lines else b"") + b".\r\n"


class LmtpConnection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self.eight_bit = False
        self.pipelining = False  # RFC 2920, offered in the LHLO reply
        self.chunking = False  # RFC 3030 BDAT, offered in the LHLO reply
        self.reused = False
        self.data_sent = False
        self.answered = False  # a reply was read since the connection was (re)used
        self.idle_since = 0.0

    async def _line(self) -> bytes:
        reader = self._reader
        if b"\n" in reader._buffer:  # type: ignore[attr-defined]
            # Here already (pipelined replies arrive together): no timer to set and cancel.
            return await reader.readline()
        async with asyncio.timeout(self._timeout):
            return await reader.readline()

    async def read_reply(self) -> Reply:
        lines: list[bytes] = []
        while True:
            try:
                line = await self._line()
            except (TimeoutError, ValueError) as exc:
                raise LmtpError(f"no reply from the LMTP server ({exc!r})") from exc
            if not line:
                raise LmtpError("the LMTP server closed the connection")
            if len(line) < 4 or not line[:3].isdigit() or len(lines) >= MAX_REPLY_LINES:
                raise LmtpError(f"malformed LMTP reply {line[:80]!r}")
            lines.append(line[4:].rstrip(b"\r\n")[:MAX_LINE])
            self.answered = True
            if line[3:4] != b"-":
                text = " ".join(x.decode("utf-8", "replace") for x in lines)
                return Reply(int(line[:3]), text)

    async def command(self, line: str) -> Reply:
        self._writer.write(line.encode("utf-8") + b"\r\n")
        await self._writer.drain()
        return await self.read_reply()

    async def commands(self, lines: Sequence[str]) -> list[Reply]:
        """Sends lines in one write and reads their replies, in order (RFC 2920 PIPELINING)."""
        self._writer.write("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
        await self._writer.drain()
        return [await self.read_reply() for _ in lines]

    async def chunked(self, lines: Sequence[str], data: bytes) -> list[Reply]:
        """Sends lines, then data as one BDAT LAST chunk, in one write; reads the replies to
        the lines (the BDAT's are read by the caller: one, or one per accepted recipient)."""
        # RFC 3030 §2: the message in canonical form, no dot-stuffing; an empty one stays
        # empty, as DATA's reader on the other side gets it.
        chunk = normalise_line_endings(data) if data else b""
        head = "".join(f"{line}\r\n" for line in lines) + f"BDAT {len(chunk)} LAST\r\n"
        self.data_sent = True
        self._writer.write(head.encode("utf-8") + chunk)
        await self._writer.drain()
        return [await self.read_reply() for _ in lines]

    async def send_data(self, data: bytes) -> None:
        self._writer.write(dot_stuff(data))
        await self._writer.drain()

    async def close(self) -> None:
        try:
            self._writer.write(b"QUIT\r\n")
            await self._writer.drain()
            await asyncio.wait_for(self.read_reply(), 2)
        except (LmtpError, OSError, TimeoutError):
            pass
        finally:
            self._writer.close()


class LmtpClient:
    """Delivers one message to several recipients; returns a Reply per recipient, in order."""

    def __init__(
        self, socket_path: Path, local_name: str, timeout: float = 60.0, keep_idle: int = 8
    ) -> None:
        self.socket_path = socket_path
        self.local_name = local_name
        self.timeout = timeout
        self.keep_idle = keep_idle
        self._idle: list[LmtpConnection] = []

    async def _connect(self) -> LmtpConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket_path), limit=MAX_LINE * 4),
                self.timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise LmtpError(f"cannot connect to {self.socket_path}: {exc}") from exc
        conn = LmtpConnection(reader, writer, self.timeout)
        try:
            greeting = await conn.read_reply()
            if greeting.code != 220:
                raise LmtpError(f"LMTP greeting {greeting}")
            lhlo = await conn.command(f"LHLO {self.local_name}")
            if not lhlo.ok:
                raise LmtpError(f"LHLO refused: {lhlo}")
        except (LmtpError, OSError):
            await conn.close()
            raise
        conn.eight_bit = "8BITMIME" in lhlo.text.upper()
        conn.pipelining = "PIPELINING" in lhlo.text.upper().split()
        conn.chunking = "CHUNKING" in lhlo.text.upper().split()
        return conn

    async def deliver(self, mail_from: str, recipients: Sequence[str], data: bytes) -> list[Reply]:
        """One LMTP transaction, on an idle connection kept from an earlier one if there is."""
        while self._idle:
            conn = self._idle.pop()
            if time.monotonic() - conn.idle_since > IDLE_SECONDS:
                await conn.close()
                continue
            try:
                return await self._deliver_on(conn, mail_from, recipients, data)
            except _Stale:
                continue  # the server closed it meanwhile: nothing was sent, try another
        return await self._deliver_on(await self._connect(), mail_from, recipients, data)

    async def _deliver_on(
        self, conn: LmtpConnection, mail_from: str, recipients: Sequence[str], data: bytes
    ) -> list[Reply]:
        try:
            replies = await self._transaction(conn, mail_from, recipients, data)
        except BaseException as exc:
            await conn.close()
            # A kept connection the server had closed: nothing of the message went out, or
            # (BDAT sends it with the envelope) the server never said a word about it.
            stale = not conn.data_sent or not conn.answered
            if isinstance(exc, (LmtpError, OSError)) and stale and conn.reused:
                raise _Stale() from exc
            if isinstance(exc, OSError):
                raise LmtpError(f"LMTP connection failed: {exc}") from exc
            raise
        if len(self._idle) < self.keep_idle:
            conn.idle_since = time.monotonic()
            conn.reused = True
            conn.data_sent = conn.answered = False
            self._idle.append(conn)
        else:
            await conn.close()
        return replies

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()

    async def _transaction(
        self, conn: LmtpConnection, mail_from: str, recipients: Sequence[str], data: bytes
    ) -> list[Reply]:
        body = " BODY=8BITMIME" if conn.eight_bit else ""
        mail_line = f"MAIL FROM:<{mail_from}>{body}"
        rcpt_lines = [f"RCPT TO:<{rcpt}>" for rcpt in recipients]
        if conn.pipelining and conn.chunking:
            return await _chunked_transaction(conn, mail_line, rcpt_lines, data)
        start: Reply | None = None
        if conn.pipelining:
            # MAIL, every RCPT and DATA in one write, their replies read in order: one round
            # trip instead of two or more per message.
            mail, *rcpt_replies, start = await conn.commands([mail_line, *rcpt_lines, "DATA"])
        else:
            mail = await conn.command(mail_line)
        if not mail.ok:
            await _abandon(conn, start)
            return [mail] * len(recipients)
        if start is None:
            rcpt_replies = [await conn.command(line) for line in rcpt_lines]
        results: list[Reply | None] = [None if r.ok else r for r in rcpt_replies]
        if all(r is not None for r in results):
            await _abandon(conn, start)
            return [r for r in results if r is not None]
        if start is None:
            start = await conn.command("DATA")
        if start.code != 354:
            await _abandon(conn, start)
            return [start if r is None else r for r in results]
        conn.data_sent = True
        await conn.send_data(data)
        # RFC 2033 §4.2: after the final dot, one reply for each recipient that was accepted.
        final: list[Reply] = []
        for r in results:
            final.append(await conn.read_reply() if r is None else r)
        return final


async def _chunked_transaction(
    conn: LmtpConnection, mail_line: str, rcpt_lines: list[str], data: bytes
) -> list[Reply]:
    """MAIL, every RCPT and the message (BDAT LAST) in one write, their replies read in order:
    one round trip per message, where DATA takes two (the 354 comes first)."""
    mail, *rcpt_replies = await conn.chunked([mail_line, *rcpt_lines], data)
    results: list[Reply | None] = [
        None if mail.ok and r.ok else (r if mail.ok else mail) for r in rcpt_replies
    ]
    if all(r is not None for r in results):
        await conn.read_reply()  # the BDAT's refusal: no recipient
        await conn.command("RSET")  # the MAIL of a transaction without recipients
        return [r for r in results if r is not None]
    # RFC 2033 §4.2: one reply for each recipient that was accepted.
    return [await conn.read_reply() if r is None else r for r in results]


async def _abandon(conn: LmtpConnection, start: Reply | None) -> None:
    """Ends a transaction that will carry no message, so the connection can be kept: a
    pipelined DATA the server took without a recipient (RFC 2920 §3.1) gets an empty message,
    then RSET."""
    if start is not None and start.code == 354:
        await conn.commands(["."])
    await conn.command("RSET")


class _Stale(Exception):
    """A kept connection turned out closed before anything of the message was sent."""
