"""A raw SMTP client for tests: sends exact bytes, reads whole (multi-line) replies."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path


class Wire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str | None = None) -> Wire:
        """Connects to 127.0.0.1:port, from another loopback address if source is given."""
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
        return cls(reader, writer)

    async def reply(self, timeout: float = 10.0) -> str:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def cmd(self, line: str) -> str:
        await self.send(line + "\r\n")
        return await self.reply()

    async def hello(self) -> str:
        greeting = await self.reply()
        assert greeting.startswith("220 "), greeting
        return await self.cmd("EHLO client.example")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def send_message(
    port: int, mail_from: str, rcpts: list[str], body: bytes, source: str | None = None
) -> str:
    """One whole transaction (from the loopback address source if given); returns the final
    reply to DATA (or the first refusal, a greeting other than 220 included: a 421 when the
    gateway could not hand the connection to a listener process that had just died)."""
    w = await Wire.open(port, source)
    try:
        greeting = await w.reply()
        if not greeting.startswith("220 "):
            return greeting
        await w.cmd("EHLO client.example")
        r = await w.cmd(f"MAIL FROM:<{mail_from}>")
        if not r.startswith("250"):
            return r
        for rcpt in rcpts:
            r = await w.cmd(f"RCPT TO:<{rcpt}>")
            if not r.startswith("250"):
                return r
        r = await w.cmd("DATA")
        if not r.startswith("354"):
            return r
        await w.send(body + b".\r\n")
        final = await w.reply()
        await w.cmd("QUIT")
        return final
    finally:
        await w.close()


def stored_messages(database: Path) -> list[sqlite3.Row]:
    """Every message in tickets.db: ticket number, queue id, subject, flags."""
    if not database.exists():
        return []
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(
            "SELECT ticket, queue_id, subject, flags, message_id FROM messages ORDER BY id"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def filing_lmtp_server(
    lhlo: bytes, delivered: list[bytes] | None = None
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A small LMTP server (asyncio.start_unix_server's callback) that answers LHLO with lhlo
    (its whole reply, CRLF included) and files every message, each kept in delivered."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 store LMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"LHLO":
                writer.write(lhlo)
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                message = await reader.readuntil(b"\r\n.\r\n")
                if delivered is not None:
                    delivered.append(message)
                writer.write(b"250 2.0.0 filed\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    return session
