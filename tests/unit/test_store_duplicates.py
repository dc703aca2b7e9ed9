"""The same message arriving again for a tenant is filed once; a reused Message-ID is flagged."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxdesk.state import Mailbox
from mxdesk.store.db import open_tickets
from mxdesk.store.duplicates import fingerprint
from mxdesk.store.tickets import TicketStore

SUPORTE = Mailbox("suporte@marca.example", "marca", "Suporte", False, True, 0.0)
VENDAS = Mailbox("vendas@marca.example", "marca", "Vendas", False, True, 0.0)
OUTRA = Mailbox("contato@outra.example", "outra", "Outra", False, True, 0.0)
DAY = 86400.0
HEAD = (
    "From: Cliente <cliente@example.com>\r\nTo: suporte@marca.example\r\n"
    "Cc: vendas@marca.example\r\nSubject: Pedido 42\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
    "Message-ID: <pedido-42@example.com>\r\n"
)
BODY = "O pedido 42 não chegou.\r\n\r\nCliente\r\n"


def mail(queue_id: str | None, trace: str = "", head: str = HEAD, body: str = BODY) -> bytes:
    first = f"X-Mxdesk-Queue-Id: {queue_id}\r\n" if queue_id else ""
    return f"{first}{trace}{head}\r\n{body}".encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[TicketStore]:
    s = TicketStore(open_tickets(tmp_path / "tickets.db"), clock=clock, duplicate_window=7 * DAY)
    yield s
    s.close()


def messages(store: TicketStore) -> list[sqlite3.Row]:
    store.db.conn.row_factory = sqlite3.Row
    try:
        return store.db.conn.execute(
            "SELECT id, ticket, recipient, queue_id, flags, note FROM messages ORDER BY id"
        ).fetchall()
    finally:
        store.db.conn.row_factory = None


def test_the_same_message_through_two_mailboxes_of_a_tenant_is_filed_once(
    store: TicketStore, clock: Clock
) -> None:
    (first,) = store.file_all(mail("Q1"), "cliente@example.com", [SUPORTE])
    clock.now += 3600
    # The copy a channel fetched from the company mailbox: other trace headers, LF endings.
    fetched = mail(
        "Q2",
        "Received: from imap.marca.example (channel vendas)\r\n"
        "Authentication-Results: mx.helpdesk.example; spf=none\r\n"
        "Return-Path: <cliente@example.com>\r\nDelivered-To: vendas@marca.example\r\n",
    ).replace(b"\r\n", b"\n")
    (again,) = store.file_all(fetched, "cliente@example.com", [VENDAS])
    assert first is not None and again is not None
    assert (again.ticket, again.duplicate, again.queue_id) == (first.ticket, True, "Q2")
    assert [(m["recipient"], m["queue_id"]) for m in messages(store)] == [
        ("suporte@marca.example", "Q1")
    ]
    # Where the 250'd copy went, and a re-delivery of it is answered from there.
    dup = store.db.conn.execute("SELECT queue_id, message, recipient FROM duplicates").fetchall()
    assert dup == [("Q2", messages(store)[0]["id"], "vendas@marca.example")]
    (redelivered,) = store.file_all(fetched, "cliente@example.com", [VENDAS])
    assert redelivered is not None and redelivered.duplicate
    assert store.db.conn.execute("SELECT count(*) FROM duplicates").fetchone() == (1,)


def test_one_delivery_to_two_mailboxes_of_a_tenant_files_one_message(store: TicketStore) -> None:
    results = store.file_all(mail("Q1"), "cliente@example.com", [SUPORTE, VENDAS, OUTRA])
    assert [r is not None and r.duplicate for r in results] == [False, True, False]
    assert results[0] is not None and results[1] is not None and results[2] is not None
    assert results[1].ticket == results[0].ticket != results[2].ticket
    # Each tenant gets its copy: duplicates are recognised within one tenant only.
    assert [m["recipient"] for m in messages(store)] == [SUPORTE.address, OUTRA.address]


def test_a_resend_after_a_lost_250_is_filed_once(store: TicketStore, clock: Clock) -> None:
    store.file_all(
        mail("Q1", "Received: from a by mx; Wed, 2 Dec 2026 10:00:01\r\n"), "c@x", [SUPORTE]
    )
    clock.now += 6.9 * DAY
    (again,) = store.file_all(
        mail("Q9", "Received: from a by mx; Wed, 9 Dec 2026 09:00:00\r\n"), "c@x", [SUPORTE]
    )
    assert again is not None and again.duplicate
    assert len(messages(store)) == 1


def test_a_resend_exactly_at_the_end_of_the_window_is_filed_once(
    store: TicketStore, clock: Clock
) -> None:
    # The window includes its end: a copy filed exactly duplicate_window_days ago is "within"
    # it; one second later it is not (test_outside_the_window_the_message_is_filed_again).
    store.file_all(mail("Q1"), "cliente@example.com", [SUPORTE])
    clock.now += 7 * DAY
    (again,) = store.file_all(mail("Q2"), "cliente@example.com", [SUPORTE])
    assert again is not None and again.duplicate
    assert [m["queue_id"] for m in messages(store)] == ["Q1"]


def test_another_message_reusing_the_message_id_is_filed_and_flagged(store: TicketStore) -> None:
    (first,) = store.file_all(mail("Q1"), "cliente@example.com", [SUPORTE])
    (other,) = store.file_all(mail("Q2", body="Outra coisa.\r\n"), "cliente@example.com", [SUPORTE])
    assert first is not None and other is not None and not other.duplicate
    rows = messages(store)
    assert [m["flags"] for m in rows] == ["", "message-id reused"]
    assert rows[1]["note"] == (
        f"Message-ID <pedido-42@example.com> was used before by message {rows[0]['id']} on"
        f" ticket #{first.ticket} with other content"
    )


def test_outside_the_window_the_message_is_filed_again(store: TicketStore, clock: Clock) -> None:
    store.file_all(mail("Q1"), "cliente@example.com", [SUPORTE])
    clock.now += 7 * DAY + 1
    (again,) = store.file_all(mail("Q2"), "cliente@example.com", [SUPORTE])
    assert again is not None and not again.duplicate
    rows = messages(store)
    assert [m["flags"] for m in rows] == ["", "repeated"]
    assert "outside the duplicate window" in rows[1]["note"]
    # The newest copy starts the window again.
    clock.now += DAY
    (third,) = store.file_all(mail("Q3"), "cliente@example.com", [SUPORTE])
    assert third is not None and third.duplicate


def test_a_window_of_zero_turns_recognition_off(tmp_path: Path) -> None:
    s = TicketStore(open_tickets(tmp_path / "t.db"), duplicate_window=0)
    try:
        s.file_all(mail("Q1"), "cliente@example.com", [SUPORTE])
        (again,) = s.file_all(mail("Q2"), "cliente@example.com", [SUPORTE])
    finally:
        s.close()
    assert again is not None and not again.duplicate


def test_without_a_message_id_nothing_is_recognised(store: TicketStore) -> None:
    head = HEAD.replace("Message-ID: <pedido-42@example.com>\r\n", "")
    store.file_all(mail("Q1", head=head), "cliente@example.com", [SUPORTE])
    (again,) = store.file_all(mail("Q2", head=head), "cliente@example.com", [SUPORTE])
    assert again is not None and not again.duplicate
    assert [m["flags"] for m in messages(store)] == ["", ""]


def test_rows_without_a_fingerprint_do_not_count(store: TicketStore) -> None:
    # Filed before fingerprints existed, or one of our replies (outbound rows have none).
    store.file_all(mail("Q1"), "cliente@example.com", [SUPORTE])
    store.db.conn.execute("UPDATE messages SET fingerprint = NULL")
    (again,) = store.file_all(mail("Q2"), "cliente@example.com", [SUPORTE])
    assert again is not None and not again.duplicate
    assert [m["flags"] for m in messages(store)] == ["", ""]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Subject: Pedido 42", "Subject: Pedido 43"),
        ("To: suporte@marca.example", "To: vendas@marca.example"),
        ("Cc: vendas@marca.example", "Cc: outro@marca.example"),
        ("From: Cliente", "From: Outro"),
        ("10:00:00 +0000", "10:00:01 +0000"),
        ("não chegou", "nao chegou"),
    ],
)
def test_the_fingerprint_covers_what_a_retry_keeps(old: str, new: str) -> None:
    raw = mail(None)
    assert fingerprint(raw.replace(old.encode(), new.encode())) != fingerprint(raw)


def test_the_fingerprint_ignores_trace_headers_line_endings_and_folding() -> None:
    raw = mail("Q1")
    traced = mail(
        "Q2",
        "Received: from x\r\n\tby y; Wed, 02 Dec 2026\r\nReturn-Path: <a@b>\r\n"
        "Delivered-To: z@marca.example\r\nAuthentication-Results: h; none\r\n"
        "DKIM-Signature: v=1; d=example.com\r\n",
    )
    folded = raw.replace(b"Subject: Pedido 42", b"Subject: Pedido\r\n   42")
    lf = raw.replace(b"\r\n", b"\n") + b"\n"
    assert fingerprint(traced) == fingerprint(folded) == fingerprint(lf) == fingerprint(raw)


def test_the_lookup_is_cheap_with_many_messages(store: TicketStore) -> None:
    rows = [(i // 3 + 1, f"k{i}", f"<m{i}@example.com>", f"{i:064x}", 1.0) for i in range(30000)]
    conn = store.db.conn
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO tickets (number, tenant, mailbox, created, updated)"
        " VALUES (?, 'marca', 'suporte@marca.example', 1, 1)",
        [(n,) for n in range(1, 10001)],
    )
    conn.executemany(
        "INSERT INTO messages (ticket, idempotency_key, message_id, fingerprint, raw, created)"
        " VALUES (?, ?, ?, ?, x'', ?)",
        rows,
    )
    conn.execute("COMMIT")
    plan = " ".join(
        str(r)
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT m.id FROM messages m JOIN tickets t ON t.number = m.ticket"
            " WHERE m.message_id = ? AND m.fingerprint = ? AND t.tenant = ?",
            ["<m1@example.com>", "x", "marca"],
        )
    )
    assert "messages_message_id" in plan
    started = time.perf_counter()
    for i in range(200):
        store.file_all(mail(f"Q{i}", head=HEAD.replace("42@", f"{i}@")), "c@x", [SUPORTE])
    per_message = (time.perf_counter() - started) / 200
    print(f"\nfiling with 30,000 messages stored: {per_message * 1000:.2f} ms per message")
    assert per_message < 0.05
