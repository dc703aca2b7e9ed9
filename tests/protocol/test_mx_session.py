"""The MX's session layer (mxdesk/gateway/smtpwire.py) where it reads and writes on its own:
whole transactions in one write, overlong lines across packets, a client that does not read;
and the bounds of its commands (smtpsession.py): the length of a line, unknown commands."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from conftest import MAILBOX, Running, wait_for
from wire import Wire, stored_messages

from mxdesk.gateway.mx import MxHandler
from mxdesk.gateway.smtpsession import SmtpSession


def _message(subject: str) -> bytes:
    return (
        f"Subject: {subject}\r\n\r\n.ponto no começo\r\n".replace("\r\n.", "\r\n..").encode()
        + b".\r\n"
    )


async def test_a_client_that_sends_everything_at_once_gets_every_reply_in_order(
    running: Running,
) -> None:
    w = await Wire.open(running.port)
    assert (await w.reply()).startswith("220 ")
    rcpt = f"RCPT TO:<{MAILBOX}>\r\n".encode()
    # Not even waiting for the 354s: two transactions and QUIT in one write.
    await w.send(
        b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n"
        + rcpt
        + b"DATA\r\n"
        + _message("um")
        + b"MAIL FROM:<b@example.org>\r\n"
        + rcpt
        + b"DATA\r\n"
        + _message("dois")
        + b"QUIT\r\n"
    )
    replies = [await w.reply() for _ in range(10)]
    codes = [r[:3] for r in replies]
    assert codes == ["250", "250", "250", "354", "250", "250", "250", "354", "250", "221"]
    assert "PIPELINING" in replies[0]
    assert replies[4].startswith("250 2.0.0 Ok: queued as ")
    assert replies[8].startswith("250 2.0.0 Ok: queued as ") and replies[8] != replies[4]
    await w.close()
    db = running.config.store.database
    rows = await wait_for(lambda: len(stored_messages(db)) == 2 and stored_messages(db))
    assert sorted(r["subject"] for r in rows) == ["dois", "um"]


async def test_an_overlong_line_across_packets_is_answered_500_and_the_session_goes_on(
    running: Running,
) -> None:
    w = await Wire.open(running.port)
    await w.hello()
    for _ in range(5):  # 5,000 bytes without a line end, in pieces
        await w.send(b"X" * 1000)
        await asyncio.sleep(0.01)
    await w.send(b"\r\nNOOP\r\n")
    assert (await w.reply()).startswith("500 5.5.2 Command line too long")
    assert (await w.reply()).startswith("250 2.0.0")
    # One over the line limit in a single packet; one at the command limit (512 octets
    # before the CRLF: RFC 5321 §4.5.3.1.4 counts 512 with it, aiosmtpd without), one past.
    await w.send(b"NOOP " + b"x" * 1100 + b"\r\n")
    assert (await w.reply()).startswith("500 5.5.2 Command line too long")
    assert (await w.cmd("NOOP " + "x" * 507)).startswith("250 2.0.0")
    assert (await w.cmd("NOOP " + "x" * 508)).startswith("500 5.5.2 Command line too long")
    assert (await w.cmd("QUIT")).startswith("221")
    await w.close()


def _padded_mail(length: int, params: str) -> str:
    """A MAIL command of exactly length octets (before its CRLF), its sender's domain grown in
    labels of at most 63 octets (RFC 1035 §2.3.4) to fill it."""
    head, tail = "MAIL FROM:<cliente@", f".example>{params}"
    room = length - len(head) - len(tail)
    labels = []
    while room > 63:
        labels.append("d" * 62)
        room -= 63
    labels.append("d" * room)
    line = head + ".".join(labels) + tail
    assert len(line) == length
    return line


async def test_a_mail_command_after_ehlo_has_room_for_size_and_smtputf8(running: Running) -> None:
    """A command line is 512 octets (RFC 5321 §4.5.3.1.4); MAIL's, after EHLO, may be 26 longer
    for SIZE (RFC 1870 §3: " SIZE=" and 20 digits) and 10 for SMTPUTF8 (RFC 6531): 548,
    counted without the CRLF as the other lines are here (and by aiosmtpd). After HELO no
    parameter is taken, so MAIL gets no more room than any command."""
    params = " SIZE=1000 SMTPUTF8"
    w = await Wire.open(running.port)
    await w.hello()
    too_long = await w.cmd(_padded_mail(549, params))
    assert too_long.startswith("500 5.5.2 Command line too long"), too_long
    assert (await w.cmd(_padded_mail(548, params))).startswith("250 2.1.0")
    assert (await w.cmd("RSET")).startswith("250")
    assert (await w.cmd("HELO client.example")).startswith("250")
    assert (await w.cmd(_padded_mail(513, ""))).startswith("500 5.5.2 Command line too long")
    assert (await w.cmd(_padded_mail(512, ""))).startswith("250 2.1.0")
    assert (await w.cmd("QUIT")).startswith("221")
    await w.close()


async def test_the_fifth_unknown_command_ends_the_session(running: Running) -> None:
    """aiosmtpd's bound on unrecognized commands, kept: four are each answered 500 and the
    session goes on (the commands between them do not start the count again); the fifth is
    answered 502 and the session ends, the commands sent behind it unanswered. (RFC 5321 §3.8
    would have a 421; test_fuzz_smtp takes either as the end.)"""
    w = await Wire.open(running.port)
    await w.hello()
    for n in range(1, 5):
        reply = await w.cmd(f"XTEST{n}")
        assert reply == f'500 5.5.2 Error: command "XTEST{n}" not recognized', (n, reply)
        assert (await w.cmd("NOOP")).startswith("250 2.0.0"), n
    assert (await w.cmd("RSET")).startswith("250 2.0.0")
    await w.send("XTEST5\r\nNOOP\r\n")
    assert await w.reply() == "502 5.5.1 Too many unrecognized commands, goodbye."
    with pytest.raises(ConnectionError, match="server closed the connection"):
        await w.reply()  # not the NOOP's 250
    await w.close()


async def test_a_client_that_does_not_read_its_replies_is_not_read_either(
    running: Running,
) -> None:
    """Replies wait in the gateway only up to the transport's high-water mark: past it the
    session stops reading, so a client that sends without reading fills its own socket, not
    the gateway's memory. Every reply still arrives once it reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # small, so that they fill
        sock.setsockopt(socket.SOL_SOCKET, option, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", running.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    count = 200_000  # HELP: 6 octets in, some 80 out
    writer.write(b"HELP\r\n" * count)
    sending = asyncio.create_task(writer.drain())
    gateway = running.gateway
    assert gateway is not None

    def not_reading() -> asyncio.Transport | None:
        """The session's transport once it stopped reading (the session is made on this
        loop's next turns: the connection is there before the gateway has accepted it)."""
        sessions = [s for s in gateway.limits.sessions if isinstance(s, SmtpSession)]
        assert len(sessions) <= 1, sessions
        transport = sessions[0].transport if sessions else None
        return transport if transport is not None and not transport.is_reading() else None

    transport = await wait_for(
        not_reading, what="the session to stop reading a client that does not"
    )
    held = transport.get_write_buffer_size()
    assert held <= 256 * 1024, f"{held} bytes of replies held for a client that does not read"
    lines = 0
    data = b""
    while lines < count + 1:  # the greeting, then a reply to each HELP
        chunk = await asyncio.wait_for(reader.read(1 << 20), 30)
        assert chunk, "the gateway closed the session"
        data = data[-200:] + chunk
        lines += chunk.count(b"\n")
    await sending
    assert data.endswith(
        b"250 2.0.0 Supported commands: DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n"
    ), data[-200:]
    writer.write(b"QUIT\r\n")
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"221")
    writer.close()


async def test_commands_sent_while_a_message_is_committed_wait_within_bounds(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a message's reply waits (its commit, its verdicts), what the client pipelines
    behind it is kept up to a bound; then the session stops reading until it is served."""
    release = asyncio.Event()
    accept = MxHandler.data

    async def slow(self: MxHandler, session: Any, envelope: Any) -> str:
        await release.wait()
        return await accept(self, session, envelope)

    monkeypatch.setattr(MxHandler, "data", slow)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", running.port))
    w = Wire(*await asyncio.open_connection(sock=sock))
    await w.hello()
    await w.cmd("MAIL FROM:<a@example.org>")
    await w.cmd(f"RCPT TO:<{MAILBOX}>")
    assert (await w.cmd("DATA")).startswith("354")
    count = 500_000  # 3 MB of NOOP behind the final dot
    w.writer.write(_message("espera") + b"NOOP\r\n" * count)
    assert running.gateway is not None
    (session,) = [s for s in running.gateway.limits.sessions if isinstance(s, SmtpSession)]
    transport = session.transport
    assert transport is not None
    await wait_for(
        lambda: not transport.is_reading(), what="the session to stop reading what waits"
    )
    assert len(session._buffer) <= 64 * 1024 + 256 * 1024, len(session._buffer)
    release.set()
    assert (await w.reply()).startswith("250 2.0.0 Ok: queued as ")
    received = bytearray()
    while received.count(b"\n") < count:
        chunk = await asyncio.wait_for(w.reader.read(1 << 20), 30)
        assert chunk, "the gateway closed the session"
        received += chunk
    assert received == b"250 2.0.0 OK\r\n" * count
    assert (await w.cmd("QUIT")).startswith("221")
    await w.close()


async def test_a_message_sent_before_the_client_shuts_its_side_is_still_answered(
    running: Running,
) -> None:
    w = await Wire.open(running.port)
    await w.hello()
    await w.cmd("MAIL FROM:<a@example.org>")
    await w.cmd(f"RCPT TO:<{MAILBOX}>")
    assert (await w.cmd("DATA")).startswith("354")
    await w.send(_message("meio fechado") + b"QUIT\r\n")
    w.writer.write_eof()  # all it will send: the reply must still come
    assert (await w.reply()).startswith("250 2.0.0 Ok: queued as ")
    assert (await w.reply()).startswith("221")
    assert await asyncio.wait_for(w.reader.read(), 10) == b""
    await w.close()
    db = running.config.store.database
    rows = await wait_for(lambda: stored_messages(db))
    assert [r["subject"] for r in rows] == ["meio fechado"]


async def test_a_reply_that_repeats_the_client_stays_within_512_octets(running: Running) -> None:
    """RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF, even when it
    repeats a command line of 512 (aiosmtpd's replies repeated it whole)."""
    w = await Wire.open(running.port)
    await w.hello()
    for line in ("X" * 512, "VRFY <" + '"' * 505, "NOOP"):
        reply = await w.cmd(line)
        assert len(reply.encode()) + 2 <= 512, (line[:10], len(reply))
    await w.close()


def count_writes(session: SmtpSession) -> list[bytes]:
    """What the session writes to its client from now on, one item per write."""
    transport = session.transport
    assert transport is not None
    writes: list[bytes] = []
    write = transport.write

    def counted(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    return writes


async def test_the_replies_of_pipelined_commands_leave_in_one_write(running: Running) -> None:
    """RFC 2920 §3.2: the replies to MAIL, RCPT and DATA sent together go out together, one
    write (and one segment) instead of three for the client to read."""
    w = await Wire.open(running.port)
    await w.hello()
    assert running.gateway is not None
    (session,) = [s for s in running.gateway.limits.sessions if isinstance(s, SmtpSession)]
    writes = count_writes(session)
    await w.send(f"MAIL FROM:<a@example.org>\r\nRCPT TO:<{MAILBOX}>\r\nDATA\r\n".encode())
    assert [(await w.reply())[:3] for _ in range(3)] == ["250", "250", "354"]
    assert len(writes) == 1 and writes[0].count(b"\r\n") == 3
    await w.send(_message("junto") + b"QUIT\r\n")
    assert (await w.reply()).startswith("250 2.0.0 Ok: queued as ")
    assert (await w.reply()).startswith("221")
    await w.close()


async def test_a_size_of_digits_that_are_not_ascii_is_a_syntax_error(running: Running) -> None:
    """SIZE=² (a digit to str.isdigit(), not to int()) is the client's error, not ours."""
    w = await Wire.open(running.port)
    await w.hello()
    reply = await w.cmd("MAIL FROM:<a@example.org> SIZE=\u00b2")
    assert reply.startswith("501 "), reply
    assert (await w.cmd("MAIL FROM:<a@example.org> SIZE=100")).startswith("250")
    await w.close()
