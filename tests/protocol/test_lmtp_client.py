"""The gateway's LMTP client against a scripted LMTP server on a Unix socket, with and without
PIPELINING (RFC 2920) and CHUNKING (RFC 3030): the same replies per recipient every way, and
what went over the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from wire import filing_lmtp_server

from mxdesk.gateway.lmtp import LmtpClient, LmtpError

BAD = "mau@marca.example"


@dataclass
class Script:
    """An LMTP server: refuses RCPT for BAD, MAIL from <refused@…>, and counts its reads."""

    pipelining: bool
    chunking: bool = False
    lines: list[str] = field(default_factory=list)
    reads: int = 0  # how many times the server found new bytes from the client
    writers: list[asyncio.StreamWriter] = field(default_factory=list)  # one per connection

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(*replies: str) -> None:
            writer.write("".join(f"{r}\r\n" for r in replies).encode())

        self.writers.append(writer)
        say("220 loja LMTP")
        mail_ok, rcpts = False, 0
        while line := (await self._line(reader)):
            self.lines.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb == "LHLO":
                extra = ["250-PIPELINING"] if self.pipelining else []
                extra += ["250-CHUNKING"] if self.chunking else []
                say("250-loja", *extra, "250 8BITMIME")
            elif verb == "MAIL":
                mail_ok = "refused@" not in line
                say("250 2.1.0 Ok" if mail_ok else "550 5.7.1 not from you")
            elif verb == "RCPT":
                if not mail_ok:
                    say("503 5.5.1 need MAIL")
                elif BAD in line:
                    say("550 5.1.1 no such mailbox")
                else:
                    rcpts += 1
                    say("250 2.1.5 Ok")
            elif verb == "DATA":
                if not rcpts:
                    say("503 5.5.1 need RCPT")
                    continue
                say("354 end with .")
                body = []
                while (data := await reader.readline()) != b".\r\n":
                    body.append(data)
                self.lines.append(f"<{len(body)} lines>")
                say(*(f"250 2.0.0 filed {n}" for n in range(rcpts)))
                mail_ok, rcpts = False, 0
            elif verb == "BDAT" and self.chunking:
                size, last = line.split(" ")[1], line.upper().endswith(" LAST")
                body = (await reader.readexactly(int(size))).split(b"\r\n")
                self.lines.append(f"<{len(body) - 1} lines{'' if body[-1] == b'' else ' +'}>")
                if not rcpts:
                    say("503 5.5.1 need RCPT")
                elif last:
                    say(*(f"250 2.0.0 filed {n}" for n in range(rcpts)))
                    mail_ok, rcpts = False, 0
            elif verb == "RSET":
                mail_ok, rcpts = False, 0
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                say("221 Bye")
                break
            else:
                say("500 5.5.2 what")
        writer.close()

    async def _line(self, reader: asyncio.StreamReader) -> str:
        if not reader._buffer:  # type: ignore[attr-defined]  # nothing pipelined behind
            self.reads += 1
        return (await reader.readline()).decode().rstrip("\r\n")


@pytest.fixture(
    params=[(True, True), (True, False), (False, False)],
    ids=["chunking", "pipelining", "one-by-one"],
)
async def server(short_tmp: Path, request: pytest.FixtureRequest) -> AsyncIterator[Script]:
    script = Script(pipelining=request.param[0], chunking=request.param[1])
    srv = await asyncio.start_unix_server(script.session, str(short_tmp / "lmtp"))
    async with srv:
        yield script


def client(short_tmp: Path) -> LmtpClient:
    return LmtpClient(short_tmp / "lmtp", "mx.helpdesk.example", timeout=5)


@pytest.mark.parametrize(
    ("sender", "recipients", "codes"),
    [
        ("c@example.com", ["a@marca.example", "b@marca.example"], [250, 250]),
        ("c@example.com", ["a@marca.example", BAD, "b@marca.example"], [250, 550, 250]),
        ("c@example.com", [BAD], [550]),
        ("refused@example.com", ["a@marca.example", "b@marca.example"], [550, 550]),
    ],
    ids=["all", "one-refused", "none-accepted", "mail-refused"],
)
async def test_replies_per_recipient_with_and_without_pipelining(
    short_tmp: Path, server: Script, sender: str, recipients: list[str], codes: list[int]
) -> None:
    lmtp = client(short_tmp)
    try:
        replies = await lmtp.deliver(sender, recipients, b"Subject: x\r\n\r\n.linha\r\n")
        assert [r.code for r in replies] == codes
        # The kept connection is clean for the next message (RSET after a refusal).
        again = await lmtp.deliver("c@example.com", ["a@marca.example"], b"Subject: y\r\n\r\n")
        assert [r.code for r in again] == [250]
    finally:
        await lmtp.close()
    assert server.lines[0].startswith("LHLO")
    if codes == [250, 250]:
        assert "<3 lines>" in server.lines  # the header, the blank line, the dot line
        assert ("BDAT 22 LAST" in server.lines) == server.chunking  # the dot not doubled


async def test_bare_line_ends_go_out_as_crlf(short_tmp: Path, server: Script) -> None:
    lmtp = client(short_tmp)
    try:
        replies = await lmtp.deliver("c@example.com", ["a@marca.example"], b"S: x\n\nsem fim")
        assert [r.code for r in replies] == [250]
    finally:
        await lmtp.close()
    assert "<3 lines>" in server.lines  # each line ended by CRLF, the last one too


async def test_a_kept_connection_the_server_closed_is_replaced(
    short_tmp: Path, server: Script
) -> None:
    """The server ended an idle kept connection (a restart of the store): nothing of the next
    message was answered on it, so it goes on a new connection at once, not back to the
    queue."""
    lmtp = client(short_tmp)
    try:
        first = await lmtp.deliver("c@example.com", ["a@marca.example"], b"x\r\n")
        server.writers[0].close()
        await asyncio.sleep(0.05)
        second = await lmtp.deliver("c@example.com", ["a@marca.example"], b"y\r\n")
        assert [r.code for r in first + second] == [250, 250]
    finally:
        await lmtp.close()
    assert len(server.writers) == 2


async def test_pipelining_sends_the_envelope_in_one_write(short_tmp: Path, server: Script) -> None:
    lmtp = client(short_tmp)
    try:
        for i in range(5):
            replies = await lmtp.deliver("c@example.com", ["a@marca.example"], b"x\r\n")
            assert [r.code for r in replies] == [250], i
    finally:
        await lmtp.close()
    # The envelope (MAIL, RCPT, DATA) of each message arrives in one read with PIPELINING,
    # in three without (the body is read apart); with CHUNKING the message comes along in
    # the same write (BDAT), so the server reads nothing more. Plus LHLO and QUIT.
    per_message = 1 if server.pipelining else 3
    assert server.reads == 2 + 5 * per_message


@pytest.mark.parametrize("silent_after", ["MAIL", "DATA", "."])
async def test_a_server_that_stops_answering_times_out(short_tmp: Path, silent_after: str) -> None:
    """Replies that are already there are read without a timer; one that does not come ends
    the attempt after the timeout, wherever the server stops: half-way through the replies of
    a pipelined group, or after the message."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 loja LMTP\r\n")
        while line := await reader.readline():
            if line.startswith(b"LHLO"):
                writer.write(b"250-loja\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                continue
            if line.startswith(b"MAIL"):
                # The whole group (MAIL, RCPT, DATA) came in one write: answer part of it.
                writer.write(b"250 2.1.0 Ok\r\n")
                if silent_after == "MAIL":
                    break
                writer.write(b"250 2.1.5 Ok\r\n354 end with .\r\n")
                if silent_after == "DATA":
                    break
                while await reader.readline() != b".\r\n":
                    pass
                break  # and no reply to the final dot
        await asyncio.sleep(5)  # silent, the connection open
        writer.close()

    srv = await asyncio.start_unix_server(session, str(short_tmp / "lmtp"))
    async with srv:
        lmtp = LmtpClient(short_tmp / "lmtp", "mx.helpdesk.example", timeout=0.3)
        with pytest.raises(LmtpError, match="no reply"):
            await asyncio.wait_for(lmtp.deliver("c@example.com", ["a@marca.example"], b"x\r\n"), 3)
        await lmtp.close()


def long_lhlo_server(lines: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    """An LMTP server whose LHLO reply has `lines` lines (a long list of extensions); it files
    every message."""
    extensions = b"".join(b"250-X-EXT%d\r\n" % n for n in range(lines - 1))
    return filing_lmtp_server(extensions + b"250 8BITMIME\r\n")


@pytest.mark.parametrize(
    ("lines", "read"),
    [(100, True), (101, False), (102, False)],
)
async def test_a_reply_of_up_to_100_lines_is_read(short_tmp: Path, lines: int, read: bool) -> None:
    """MAX_REPLY_LINES: a longer reply is taken for a broken server, the attempt fails
    (temporarily: the message stays queued) instead of reading lines without end."""
    srv = await asyncio.start_unix_server(long_lhlo_server(lines), str(short_tmp / "lmtp"))
    async with srv:
        lmtp = client(short_tmp)
        try:
            if read:
                replies = await lmtp.deliver("c@example.com", ["a@marca.example"], b"x\r\n")
                assert [r.code for r in replies] == [250]
            else:
                with pytest.raises(LmtpError, match="malformed LMTP reply"):
                    await lmtp.deliver("c@example.com", ["a@marca.example"], b"x\r\n")
        finally:
            await lmtp.close()
