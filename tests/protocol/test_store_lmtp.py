"""The ticket store's LMTP server on a real Unix socket, spoken to byte by byte."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sqlite3
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from conftest import BASE, MAILBOX
from wire import Wire

from mxdesk import config as cfg
from mxdesk import state
from mxdesk.state import Mailbox
from mxdesk.store.lmtp import LmtpHandler, LmtpSession, SocketError, listen_unix
from mxdesk.store.service import StoreService, start_store
from mxdesk.store.tickets import Filed

INBOX = f"marca@{BASE}"
OTHER_TENANT = f"contato@outra.{BASE}"


@pytest.fixture
async def store(config: cfg.Config) -> AsyncIterator[StoreService]:
    service = await start_store(config)
    yield service
    await service.close()


@contextlib.asynccontextmanager
async def lmtp(path: Path) -> AsyncIterator[Wire]:
    """An LMTP session on the store's socket, greeted and past LHLO; closed at the end."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    w = Wire(reader, writer)
    try:
        assert (await w.reply()).startswith("220 ")
        lhlo = await w.cmd("LHLO gateway.example")
        assert "PIPELINING" in lhlo and "ENHANCEDSTATUSCODES" in lhlo
        yield w
    finally:
        await w.close()


def message(subject: str = "Ajuda", queue_id: str | None = "Q1", **headers: str) -> bytes:
    lines = [f"X-Mxdesk-Queue-Id: {queue_id}"] if queue_id else []
    lines += [
        "From: Cliente <cliente@example.com>",
        f"To: {MAILBOX}",
        f"Subject: {subject}",
        f"Message-ID: <{subject.replace(' ', '.')}.{queue_id}@example.com>",
    ]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\nOlá, preciso de ajuda.\r\n").encode()


async def transaction(
    w: Wire, rcpts: Sequence[str], data: bytes, sender: str = "cliente@example.com"
) -> tuple[list[str], list[str]]:
    """RCPT replies, then every reply after the final dot (as many as were accepted)."""
    assert (await w.cmd(f"MAIL FROM:<{sender}>")).startswith("250")
    rcpt_replies = [await w.cmd(f"RCPT TO:<{r}>") for r in rcpts]
    assert (await w.cmd("DATA")).startswith("354")
    await w.send(data + b".\r\n")
    accepted = sum(r.startswith("250") for r in rcpt_replies)
    return rcpt_replies, [await w.reply() for _ in range(accepted)]


async def deliver(path: Path, rcpts: Sequence[str], data: bytes, **kw: str) -> list[str]:
    async with lmtp(path) as w:
        _, replies = await transaction(w, rcpts, data, **kw)
        # Nothing more is pending: the next command gets its own reply.
        assert (await w.cmd("NOOP")).startswith("250")
        return replies


def ticket_of(reply: str) -> int:
    match = re.fullmatch(r"250 2\.0\.0 \S+ ticket #(\d+)( already stored)?", reply)
    assert match, reply
    return int(match.group(1))


def rows(config: cfg.Config, sql: str, *args: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(config.store.database)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_unknown_recipient_refused_at_rcpt_and_one_reply_after_data(
    config: cfg.Config, store: StoreService
) -> None:
    async with lmtp(config.store.lmtp_socket) as w:
        rcpt, final = await transaction(w, ["nobody@" + BASE, MAILBOX.upper()], message())
        assert rcpt == [f"550 5.1.1 <nobody@{BASE}>: no such mailbox", "250 2.1.5 OK"]
        assert len(final) == 1 and final[0].startswith("250 2.0.0 Q1 ticket #")
        assert (await w.cmd("NOOP")).startswith("250")
    assert [r["recipient"] for r in rows(config, "SELECT recipient FROM messages")] == [MAILBOX]


async def test_sub_address_reaches_the_mailbox(config: cfg.Config, store: StoreService) -> None:
    await deliver(config.store.lmtp_socket, [MAILBOX.replace("@", "+pedido42@")], message())
    assert [r["recipient"] for r in rows(config, "SELECT recipient FROM messages")] == [MAILBOX]


async def test_a_mailbox_added_while_the_store_runs_is_found(
    config: cfg.Config, store: StoreService
) -> None:
    # The store remembers its lookups; a change to the state database (the CLI's) is seen.
    new = f"vendas@marca.{BASE}"
    async with lmtp(config.store.lmtp_socket) as w:
        rcpt, _ = await transaction(w, [new, MAILBOX], message())
        assert rcpt[0].startswith("550 5.1.1")
        conn = state.connect(config.general.state_db)
        state.add_mailbox(conn, BASE, new, "Vendas")
        conn.close()
        await asyncio.sleep(0.01)
        rcpt, final = await transaction(w, [new], message("Outra", "Q2"))
        assert rcpt == ["250 2.1.5 OK"] and final[0].startswith("250 2.0.0")


async def test_a_command_line_over_1000_octets_is_refused_and_the_session_goes_on(
    config: cfg.Config, store: StoreService
) -> None:
    # The reader takes a whole pipelined message at once; the line limit is still kept.
    async with lmtp(config.store.lmtp_socket) as w:
        assert (await w.cmd(f"MAIL FROM:<{'a' * 1100}@example.com>")).startswith("500")
        rcpt, final = await transaction(w, [MAILBOX], message())
        assert rcpt == ["250 2.1.5 OK"] and final[0].startswith("250 2.0.0")


async def test_close_ends_idle_sessions_and_removes_the_socket(config: cfg.Config) -> None:
    service = await start_store(config)
    async with lmtp(config.store.lmtp_socket) as w:
        await service.close()
        with pytest.raises(ConnectionError):
            await w.cmd("NOOP")
    assert not config.store.lmtp_socket.exists()


async def test_two_recipients_get_two_replies_in_rcpt_order(
    config: cfg.Config, store: StoreService
) -> None:
    replies = await deliver(config.store.lmtp_socket, [MAILBOX, OTHER_TENANT, INBOX], message())
    assert len(replies) == 3
    first, second, third = (ticket_of(r) for r in replies)
    tickets = rows(config, "SELECT number, mailbox, tenant FROM tickets ORDER BY number")
    assert [(t["number"], t["mailbox"], t["tenant"]) for t in tickets] == [
        (first, MAILBOX, "marca"),
        (second, OTHER_TENANT, "outra"),
    ]
    # The same message for a second mailbox of the same tenant is filed once.
    assert third == first and replies[2].endswith("already stored")


async def test_redelivery_with_the_same_queue_id_is_stored_once(
    config: cfg.Config, store: StoreService
) -> None:
    data = message(queue_id="Q7")
    first = await deliver(config.store.lmtp_socket, [MAILBOX], data)
    again = await deliver(config.store.lmtp_socket, [MAILBOX], data)
    assert ticket_of(first[0]) == ticket_of(again[0])
    assert again[0].endswith("already stored")
    assert len(rows(config, "SELECT id FROM messages")) == 1
    # The same bytes for another tenant's mailbox are another delivery.
    await deliver(config.store.lmtp_socket, [OTHER_TENANT], data)
    assert len(rows(config, "SELECT id FROM messages")) == 2


async def test_a_forged_queue_id_header_later_in_the_message_is_ignored(
    config: cfg.Config, store: StoreService
) -> None:
    forged = b"X-Mxdesk-Queue-Id: Q1\r\n" + message(queue_id=None)
    await deliver(config.store.lmtp_socket, [MAILBOX], message(queue_id="Q1"))
    reply = await deliver(config.store.lmtp_socket, [MAILBOX], b"Received: x\r\n" + forged)
    assert not reply[0].endswith("already stored")
    assert len(rows(config, "SELECT id FROM messages")) == 2


async def test_reply_with_in_reply_to_joins_the_ticket(
    config: cfg.Config, store: StoreService
) -> None:
    first = await deliver(config.store.lmtp_socket, [MAILBOX], message("Pedido", "Q1"))
    answer = message("Re: Pedido", "Q2", In_Reply_To="<Pedido.Q1@example.com>")
    second = await deliver(config.store.lmtp_socket, [MAILBOX], answer)
    assert ticket_of(first[0]) == ticket_of(second[0])
    # The same reference sent to another tenant's mailbox does not reach this ticket.
    stray = message("Re: x", "Q3", In_Reply_To="<Pedido.Q1@example.com>")
    other = await deliver(config.store.lmtp_socket, [OTHER_TENANT], stray)
    assert ticket_of(other[0]) != ticket_of(first[0])


async def test_bounce_with_null_sender_joins_flagged_automatic(
    config: cfg.Config, store: StoreService
) -> None:
    first = await deliver(config.store.lmtp_socket, [MAILBOX], message("Pedido", "Q1"))
    dsn = (
        b"X-Mxdesk-Queue-Id: Q9\r\nFrom: MAILER-DAEMON@example.com\r\nSubject: failure\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=R\r\n\r\n"
        b"--R\r\nContent-Type: text/plain\r\n\r\nundeliverable\r\n"
        b"--R\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <Pedido.Q1@example.com>\r\n"
        b"--R--\r\n"
    )
    replies = await deliver(config.store.lmtp_socket, [MAILBOX], dsn, sender="")
    assert ticket_of(replies[0]) == ticket_of(first[0])
    flags = rows(config, "SELECT flags, envelope_from FROM messages ORDER BY id")
    # A remote server's notice: automatic, and its sender neither takes part nor is verified.
    assert [(r["flags"], r["envelope_from"]) for r in flags] == [
        ("", "cliente@example.com"),
        ("automatic,unverified sender", ""),
    ]


async def test_malformed_mime_is_stored_with_defects(
    config: cfg.Config, store: StoreService
) -> None:
    broken = (
        b"X-Mxdesk-Queue-Id: Q5\r\nFrom: a@example.com\r\nSubject: quebrado\r\n"
        b"this line is not a header\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain; charset=x-nonsense\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n@@not base64@@\r\n--B\r\n"
    )
    replies = await deliver(config.store.lmtp_socket, [MAILBOX], broken)
    assert replies[0].startswith("250 2.0.0 Q5 ticket #")
    (row,) = rows(config, "SELECT subject, defects, raw FROM messages")
    assert row["subject"] == "quebrado"
    assert row["defects"] and row["raw"] == broken


async def test_socket_is_0660_in_a_0750_directory(config: cfg.Config, store: StoreService) -> None:
    path = config.store.lmtp_socket
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750


async def test_stale_socket_is_replaced_and_a_live_one_is_not(config: cfg.Config) -> None:
    path = config.store.lmtp_socket
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    service = await start_store(config)
    try:
        with pytest.raises(SocketError, match="in use by a running store: stop it first"):
            await start_store(config)
        assert ticket_of((await deliver(path, [MAILBOX], message()))[0]) >= 1
    finally:
        await service.close()
    assert not path.exists()


class FailingFiler:
    """Fails the first recipient temporarily, files the second, or raises for everything."""

    def __init__(self, raise_text: str | None = None) -> None:
        self.raise_text = raise_text

    async def file(
        self, raw: bytes, envelope_from: str, mailboxes: Sequence[Mailbox]
    ) -> list[Filed | None]:
        if self.raise_text:
            raise RuntimeError(self.raise_text)
        return [None, *(Filed("Q1", 42, False) for _ in mailboxes[1:])]


class Directory:
    def find(self, address: str) -> Mailbox | None:
        if address.startswith("boom"):
            raise sqlite3.OperationalError("database is locked at /secret/path")
        return Mailbox(address, "marca", "Marca", False, True, 0.0)


async def serve_fake(path: Path, filer: FailingFiler) -> asyncio.Server:
    handler = LmtpHandler(Directory(), filer, max_recipients=3)
    return await listen_unix(path, lambda: LmtpSession(handler, set(), hostname="store.test"))


async def test_storage_errors_answer_451_per_recipient_without_details(short_tmp: Path) -> None:
    path = short_tmp / "s" / "lmtp.sock"
    server = await serve_fake(path, FailingFiler())
    try:
        replies = await deliver(path, ["a@x.example", "b@x.example"], message())
        assert replies == [
            "451 4.3.0 Temporary failure in the ticket store, try again later",
            "250 2.0.0 Q1 ticket #42",
        ]
        async with lmtp(path) as w:
            assert (await w.cmd("MAIL FROM:<a@x.example>")).startswith("250")
            rcpt = await w.cmd("RCPT TO:<boom@x.example>")
            assert rcpt == "451 4.3.0 Temporary failure in the ticket store, try again later"
            over = [await w.cmd(f"RCPT TO:<r{i}@x.example>") for i in range(4)]
            assert over[-1] == "452 4.5.3 Too many recipients"
    finally:
        server.close()


async def test_an_exception_while_filing_gives_451_for_each_recipient(short_tmp: Path) -> None:
    path = short_tmp / "s" / "lmtp.sock"
    server = await serve_fake(path, FailingFiler(raise_text="secret detail"))
    try:
        async with lmtp(path) as w:
            _, final = await transaction(w, ["a@x.example", "b@x.example"], message())
            assert [r[:9] for r in final] == ["451 4.3.0", "451 4.3.0"]
            assert all("secret" not in r for r in final)
            # The transaction is over: a new one can start on the same connection.
            assert (await w.cmd("MAIL FROM:<a@x.example>")).startswith("250")
    finally:
        server.close()


async def test_a_long_line_reaches_the_filer_and_each_recipient_is_answered(
    short_tmp: Path,
) -> None:
    # Like Postfix, lines over 1000 octets are kept rather than refused: mail is not lost
    # over a formatting fault of the sender.
    path = short_tmp / "s" / "lmtp.sock"
    server = await serve_fake(path, FailingFiler())
    try:
        async with lmtp(path) as w:
            data = b"Subject: x\r\n\r\n" + b"a" * 5000 + b"\r\n"
            _, final = await transaction(w, ["a@x.example", "b@x.example"], data)
            assert [r[:3] for r in final] == ["451", "250"]  # what the filer answers
            assert (await w.cmd("NOOP")).startswith("250")
    finally:
        server.close()
