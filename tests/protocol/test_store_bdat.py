"""The store's LMTP server takes a message in BDAT chunks (RFC 3030), spoken to byte by byte on
its Unix socket: the same ticket as with DATA, chunks read whole whatever the answer, one
reply per chunk and one per accepted recipient after the LAST."""

from __future__ import annotations

from asyncio import open_unix_connection
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from conftest import BASE, MAILBOX
from test_mx_session import count_writes
from test_store_lmtp import OTHER_TENANT, lmtp, message, rows, ticket_of
from wire import Wire

from mxdesk import config as cfg
from mxdesk.state import Mailbox
from mxdesk.store.lmtp import LmtpHandler, LmtpSession, listen_unix
from mxdesk.store.service import StoreService, start_store
from mxdesk.store.tickets import Filed


@pytest.fixture
async def store(config: cfg.Config) -> AsyncIterator[StoreService]:
    service = await start_store(config)
    yield service
    await service.close()


async def envelope(w: Wire, rcpts: Sequence[str]) -> None:
    assert (await w.cmd("MAIL FROM:<cliente@example.com>")).startswith("250")
    for r in rcpts:
        assert (await w.cmd(f"RCPT TO:<{r}>")).startswith("250")


async def chunk(w: Wire, data: bytes, last: str = "") -> str:
    """Sends one BDAT chunk (last: the end marker as written) and reads its reply."""
    await w.send(f"BDAT {len(data)}{' ' + last if last else ''}\r\n".encode() + data)
    return await w.reply()


async def test_lhlo_offers_chunking_and_one_chunk_files_the_message(
    config: cfg.Config, store: StoreService
) -> None:
    async with lmtp(config.store.lmtp_socket) as w:
        assert "250-CHUNKING" in await w.cmd("LHLO gateway.example")
        data = message(subject="Em partes")
        # The envelope and the message in one write, as the gateway sends them.
        await w.send(
            f"MAIL FROM:<cliente@example.com>\r\nRCPT TO:<{MAILBOX}>\r\n"
            f"RCPT TO:<{OTHER_TENANT}>\r\nBDAT {len(data)} LAST\r\n".encode()
            + data
        )
        replies = [await w.reply() for _ in range(5)]
        assert [r[:3] for r in replies[:3]] == ["250"] * 3  # MAIL and the two RCPT
        assert [ticket_of(r) for r in replies[3:]] == [1, 2]
        assert (await w.cmd("NOOP")).startswith("250")  # nothing more was answered
    stored = rows(config, "SELECT subject FROM tickets ORDER BY number")
    assert [t["subject"] for t in stored] == ["Em partes", "Em partes"]


async def test_chunks_make_one_message_byte_for_byte_without_dot_unstuffing(
    config: cfg.Config, store: StoreService
) -> None:
    body = b"..dois pontos no inicio\r\n.\r\nlinha com um ponto so\r\n"
    data = message(subject="Pontos") + body
    cut = [data[:7], data[7:100], data[100:]]
    async with lmtp(config.store.lmtp_socket) as w:
        await envelope(w, [MAILBOX])
        for part in cut[:-1]:
            assert await chunk(w, part) == f"250 2.0.0 {len(part)} octets received"
        assert ticket_of(await chunk(w, cut[-1], last="last")) == 1
    (raw,) = rows(config, "SELECT raw FROM messages")
    assert bytes(raw["raw"]).endswith(body)  # a "." line is content here, not the end


class Recording:
    """A filer that keeps what it was given and files everything."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []

    async def file(
        self, raw: bytes, envelope_from: str, mailboxes: Sequence[Mailbox]
    ) -> list[Filed | None]:
        self.raws.append(raw)
        return [Filed("Q1", 7, False) for _ in mailboxes]


class Anyone:
    def find(self, address: str) -> Mailbox | None:
        return Mailbox(address, "marca", "Marca", False, True, 0.0)


@pytest.fixture
async def small(short_tmp: Path) -> AsyncIterator[tuple[Path, Recording]]:
    """A store session with a 100-byte size limit and a recording filer."""
    path, filer = short_tmp / "s" / "lmtp.sock", Recording()
    handler = LmtpHandler(Anyone(), filer, max_recipients=3)
    server = await listen_unix(
        path, lambda: LmtpSession(handler, set(), hostname="store.test", data_size_limit=100)
    )
    try:
        yield path, filer
    finally:
        server.close()


async def test_the_envelope_replies_leave_with_the_message_replies_in_one_write(
    short_tmp: Path,
) -> None:
    """The gateway pipelines MAIL, RCPT and the BDAT chunk; the store answers all of them in
    one write once the message is filed, which the gateway reads in one go."""
    path, sessions = short_tmp / "s" / "lmtp.sock", set[LmtpSession]()
    handler = LmtpHandler(Anyone(), Recording(), max_recipients=3)
    server = await listen_unix(
        path,
        lambda: LmtpSession(handler, sessions, hostname="store.test"),
    )
    try:
        async with lmtp(path) as w:
            (session,) = sessions
            writes = count_writes(session)
            data = b"Subject: x\r\n\r\nola\r\n"
            await w.send(
                b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nRCPT TO:<c@x.example>\r\n"
                + f"BDAT {len(data)} LAST\r\n".encode()
                + data
            )
            replies = [await w.reply() for _ in range(5)]
            assert [r[:3] for r in replies] == ["250"] * 5
            assert len(writes) == 1 and writes[0].count(b"\r\n") == 5
    finally:
        server.close()


async def test_a_chunk_without_recipients_is_read_whole_and_refused(
    small: tuple[Path, Recording],
) -> None:
    path, filer = small
    async with lmtp(path) as w:
        # "MAIL FROM" inside the chunk is data to skip, never a command.
        chunk = b"MAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n"
        await w.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk + b"NOOP\r\n")
        assert await w.reply() == "503 5.5.1 Error: need RCPT command"
        assert (await w.reply()).startswith("250")  # the NOOP after the chunk
        assert (await w.cmd("MAIL FROM:<a@b.example>")).startswith("250")
    assert filer.raws == []


async def test_too_big_is_refused_for_each_recipient_and_the_next_message_goes(
    small: tuple[Path, Recording],
) -> None:
    path, filer = small
    async with lmtp(path) as w:
        await envelope(w, ["a@x.example", "b@x.example"])
        first = b"a" * 60
        assert await chunk(w, first) == "250 2.0.0 60 octets received"
        assert (await chunk(w, first)).startswith("552 5.3.4")
        # A chunk already on its way after the refusal is read and refused too.
        await w.send(b"BDAT 5 LAST\r\nfinal")
        assert [await w.reply() for _ in range(2)] == [
            "503 5.5.1 Error: an earlier chunk of this message was refused"
        ] * 2
        # The transaction is over; the next one is filed whole.
        await envelope(w, ["a@x.example"])
        assert (await chunk(w, b"ok\r\n", last="LAST")).startswith("250 2.0.0 Q1 ticket #7")
    assert filer.raws == [b"ok\r\n"]


async def test_data_after_a_chunk_is_refused_and_a_bad_bdat_ends_the_session(
    small: tuple[Path, Recording],
) -> None:
    path, filer = small
    async with lmtp(path) as w:
        await envelope(w, ["a@x.example"])
        assert (await chunk(w, b"abc")).startswith("250")
        assert await w.cmd("DATA") == "503 5.5.1 Error: DATA after BDAT in one transaction"
        assert (await w.cmd("RSET")).startswith("250")
        await envelope(w, ["a@x.example"])
        # No size: where the chunk ends cannot be known, so nothing after it is read.
        assert await w.cmd("BDAT LAST") == "501 5.5.4 Syntax: BDAT chunk-size [LAST]"
        with pytest.raises(ConnectionError):
            await w.cmd("NOOP")
    assert filer.raws == []


async def test_bdat_before_lhlo_is_refused_and_its_chunk_skipped(
    small: tuple[Path, Recording],
) -> None:
    path, _ = small
    w = Wire(*await open_unix_connection(str(path)))
    try:
        assert (await w.reply()).startswith("220")
        await w.send(b"BDAT 6 LAST\r\nLHLO x")
        assert (await w.reply()).startswith("503")
        assert "CHUNKING" in await w.cmd(f"LHLO gateway.{BASE}")
    finally:
        await w.close()


async def test_a_message_too_big_after_data_is_refused_for_each_recipient(
    small: tuple[Path, Recording],
) -> None:
    path, filer = small
    async with lmtp(path) as w:
        await envelope(w, ["a@x.example", "b@x.example"])
        assert (await w.cmd("DATA")).startswith("354")
        await w.send(b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n.\r\n")
        # RFC 2033 §4.2: each accepted recipient gets its answer, errors too.
        assert [(await w.reply())[:9] for _ in range(2)] == ["552 5.3.4"] * 2
        assert (await w.cmd("NOOP")).startswith("250")
        await envelope(w, ["a@x.example"])
        assert (await chunk(w, b"ok\r\n", last="LAST")).startswith("250 2.0.0")
    assert filer.raws == [b"ok\r\n"]


async def test_helo_and_ehlo_are_not_lmtp(small: tuple[Path, Recording]) -> None:
    path, _ = small
    w = Wire(*await open_unix_connection(str(path)))
    try:
        assert (await w.reply()).startswith("220")
        # RFC 2033 §4.1: LHLO, not HELO or EHLO, starts an LMTP session.
        assert await w.cmd("HELO gateway.example") == (
            '500 5.5.2 Error: command "HELO" not recognized'
        )
        assert (await w.cmd("EHLO gateway.example")).startswith("500 5.5.2")
        assert await w.cmd("MAIL FROM:<a@b.example>") == "503 5.5.1 Error: send LHLO first"
        assert "CHUNKING" in await w.cmd(f"LHLO gateway.{BASE}")
        assert (await w.cmd("MAIL FROM:<a@b.example>")).startswith("250")
    finally:
        await w.close()
