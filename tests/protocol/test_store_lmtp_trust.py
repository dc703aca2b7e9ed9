"""The store daemon over its LMTP socket, configured as in production: it believes the
Authentication-Results header of its configured host name, and files a message once per tenant
within [store] duplicate_window_days."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import AsyncIterator

import pytest
from conftest import BASE, MAILBOX
from test_store_lmtp import deliver

from mxdesk import config as cfg
from mxdesk.store.service import StoreService, start_store

INBOX = f"marca@{BASE}"
OTHER_TENANT = f"contato@outra.{BASE}"


@pytest.fixture
async def store(config: cfg.Config) -> AsyncIterator[StoreService]:
    service = await start_store(config)
    yield service
    await service.close()


def mail(
    queue_id: str,
    subject: str,
    auth: str = "",
    message_id: str = "<p1@cliente.example>",
    body: str = "Olá.",
) -> bytes:
    return (
        f"X-Mxdesk-Queue-Id: {queue_id}\r\n{auth}From: Cliente <cliente@cliente.example>\r\n"
        f"To: {MAILBOX}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n\r\n{body}\r\n"
    ).encode()


def passed(config: cfg.Config) -> str:
    return (
        f"Authentication-Results: {config.general.host_name}; spf=pass"
        " smtp.mailfrom=cliente.example; dkim=pass header.d=cliente.example;"
        " dmarc=pass header.from=cliente.example; arc=none\r\n"
    )


def ticket_of(reply: str) -> tuple[int, bool]:
    match = re.fullmatch(r"250 2\.0\.0 \S+ ticket #(\d+)( already stored)?", reply)
    assert match, reply
    return int(match.group(1)), bool(match.group(2))


def rows(config: cfg.Config, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(config.store.database)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_the_header_of_the_configured_host_name_lets_a_tag_join(
    config: cfg.Config, store: StoreService
) -> None:
    assert config.general.host_name == f"mx.{BASE}"
    sock = config.store.lmtp_socket
    (first,) = await deliver(sock, [MAILBOX], mail("Q1", "Pedido", passed(config)))
    number, _ = ticket_of(first)
    tag = f"Re: [#{number}] Pedido"
    (joined,) = await deliver(
        sock, [MAILBOX], mail("Q2", tag, passed(config), "<p2@cliente.example>")
    )
    foreign = passed(config).replace(config.general.host_name, "mx.elsewhere.example")
    (other,) = await deliver(sock, [MAILBOX], mail("Q3", tag, foreign, "<p3@cliente.example>"))
    (bare,) = await deliver(sock, [MAILBOX], mail("Q4", tag, "", "<p4@cliente.example>"))
    assert ticket_of(joined)[0] == number
    assert ticket_of(other)[0] != number and ticket_of(bare)[0] != number
    marked = rows(config, "SELECT number, flags, claims FROM tickets ORDER BY number")
    assert marked[1:] == [
        (ticket_of(other)[0], "unverified claim", number),
        (ticket_of(bare)[0], "unverified claim", number),
    ]
    stored = rows(config, "SELECT verdicts IS NOT NULL FROM messages ORDER BY id")
    assert stored == [(1,), (1,), (0,), (0,)]


async def test_the_same_message_for_two_mailboxes_of_a_tenant_is_filed_once(
    config: cfg.Config, store: StoreService
) -> None:
    sock = config.store.lmtp_socket
    (first,) = await deliver(sock, [MAILBOX], mail("Q1", "Pedido"))
    # The copy a channel (or a second MX delivery) brings for another mailbox of the tenant.
    copy = mail("Q2", "Pedido", "Received: from imap.cliente.example\r\n")
    again = await deliver(sock, [INBOX, OTHER_TENANT], copy)
    assert ticket_of(again[0]) == (ticket_of(first)[0], True)
    assert again[0].startswith("250 2.0.0 Q2 ticket #")
    assert ticket_of(again[1])[1] is False
    assert rows(config, "SELECT count(*) FROM messages") == [(2,)]
    assert rows(config, "SELECT queue_id, recipient FROM duplicates") == [("Q2", INBOX)]
    other = await deliver(sock, [MAILBOX], mail("Q3", "Pedido", body="Outra mensagem."))
    assert ticket_of(other[0])[1] is False
    assert rows(config, "SELECT flags FROM messages ORDER BY id")[-1] == ("message-id reused",)


async def test_a_window_of_zero_files_every_copy(config: cfg.Config) -> None:
    off = dataclasses.replace(
        config, store=dataclasses.replace(config.store, duplicate_window_days=0)
    )
    service = await start_store(off)
    try:
        await deliver(off.store.lmtp_socket, [MAILBOX], mail("Q1", "Pedido"))
        (again,) = await deliver(off.store.lmtp_socket, [MAILBOX], mail("Q2", "Pedido"))
    finally:
        await service.close()
    assert ticket_of(again)[1] is False
    assert rows(off, "SELECT flags FROM messages ORDER BY id") == [("",), ("repeated",)]
