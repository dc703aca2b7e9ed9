"""Delivery status notices from the gateway: trusted ones set the replies' statuses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from sqlite_utils import Database

from mxdesk import config as cfg
from mxdesk import operators, state
from mxdesk.secrets import notice_message_id
from mxdesk.state import Mailbox
from mxdesk.store import db as tickets_db
from mxdesk.store import outgoing, queries
from mxdesk.store.db import derived_status
from mxdesk.store.notices import read_notice
from mxdesk.store.outgoing import ReplyRequest
from mxdesk.store.submitter import Outbox, Result
from mxdesk.store.tickets import TicketStore

KEY = b"n" * 32
HOST = "mx.helpdesk.example"
MAILBOX = "suporte@marca.helpdesk.example"
CLIENTE, GERENTE = "cliente@example.com", "gerente@example.org"


@pytest.fixture
def conn(config: cfg.Config) -> Iterator[sqlite3.Connection]:
    c = state.connect(config.general.state_db)
    operators.add_operator(c, "marca", "Ana", "")
    yield c
    c.close()


@pytest.fixture
def store(config: cfg.Config) -> Iterator[TicketStore]:
    s = TicketStore(tickets_db.open_tickets(config.store.database), message_id_key=KEY)
    yield s
    s.close()


@pytest.fixture
def box(conn: sqlite3.Connection) -> Mailbox:
    found = state.get_mailbox(conn, MAILBOX)
    assert found is not None
    return found


@pytest.fixture
def sent(store: TicketStore, conn: sqlite3.Connection, box: Mailbox) -> queries.Outgoing:
    """A reply to cliente@ with gerente@ in Cc, handed to the gateway as queue entry QOUT1."""
    first = b"X-Mxdesk-Queue-Id: QIN1\r\nFrom: cliente@example.com\r\nSubject: Pedido\r\n\r\nOi\r\n"
    (filed,) = store.file_all(first, CLIENTE, [box])
    assert filed is not None
    request = ReplyRequest(filed.ticket, "Ana", "Resposta", cc=[GERENTE])
    out = outgoing.create_reply(store.db, conn, KEY, request)
    (claimed,) = Outbox(store.db).claim()
    assert Outbox(store.db).finish(claimed, Result(queue_id="QOUT1")) == "queued"
    return out


def notice(
    envid: str,
    *groups: tuple[str, str, str, str],
    key: bytes = KEY,
    queue_id: str = "QN1",
) -> bytes:
    """A notice as the gateway writes it; each group is (recipient, action, status, diagnostic)."""
    per_recipient = []
    for recipient, action, status, diagnostic in groups:
        lines = [f"Final-Recipient: rfc822; {recipient}", f"Action: {action}", f"Status: {status}"]
        if diagnostic:
            lines += ["Remote-MTA: dns; mx.example.com", f"Diagnostic-Code: smtp; {diagnostic}"]
        per_recipient.append("\r\n".join([*lines, "Last-Attempt-Date: Mon, 1 Jan 2029 10:00:00"]))
    report = "\r\n\r\n".join(
        [
            f"Reporting-MTA: dns; {HOST}\r\nX-Mxdesk-Queue-Id: QOUT1\r\n"
            f"Original-Envelope-Id: {envid}\r\nArrival-Date: Mon, 1 Jan 2029 09:00:00",
            *per_recipient,
        ]
    )
    return "\r\n".join(
        [
            f"X-Mxdesk-Queue-Id: {queue_id}",
            f"Received: from {HOST} by {HOST}",
            f"From: Mail Delivery System <MAILER-DAEMON@{HOST}>",
            f"To: <{MAILBOX}>",
            "Subject: Undelivered Mail Returned to Sender",
            f"Message-ID: {notice_message_id(key, queue_id, HOST)}",
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
            "",
            "--B",
            "Content-Type: text/plain",
            "",
            "Your message could not be delivered.",
            "--B",
            "Content-Type: message/delivery-status",
            "",
            report,
            "",
            "--B",
            "Content-Type: text/rfc822-headers",
            "",
            f"From: Suporte Marca <{MAILBOX}>",
            "Subject: Re: Pedido",
            "",
            "--B--",
            "",
        ]
    ).encode()


def deliver(store: TicketStore, box: Mailbox, raw: bytes) -> int:
    (filed,) = store.file_all(raw, "", [box])
    assert filed is not None and not filed.duplicate
    return filed.ticket


def statuses(store: TicketStore, out: queries.Outgoing) -> tuple[str, dict[str, str]]:
    now = queries.get_outgoing(store.db, out.id)
    return now.status, {d.recipient: d.status for d in now.deliveries}


def messages(store: TicketStore) -> int:
    return int(store.db.execute("SELECT count(*) FROM messages").fetchone()[0])


def test_a_failure_marks_the_reply_and_is_filed_on_its_ticket(
    store: TicketStore, box: Mailbox, sent: queries.Outgoing
) -> None:
    before = messages(store)
    bounce = notice(sent.envid, (GERENTE, "failed", "5.1.1", "550 5.1.1 <gerente@>: user unknown"))
    assert deliver(store, box, bounce) == sent.ticket
    status, each = statuses(store, sent)
    assert (status, each) == ("failed", {CLIENTE: "pending", GERENTE: "failed"})
    detail = queries.get_outgoing(store.db, sent.id).detail
    assert detail == f"{GERENTE}: 550 5.1.1 <gerente@>: user unknown"
    ticket = queries.get_ticket(store.db, sent.ticket)
    assert messages(store) == before + 1
    assert ticket.messages[-1].direction == "in" and "automatic" in ticket.messages[-1].flags
    # The gateway delivers the same notice again after a lost reply: nothing changes.
    (again,) = store.file_all(bounce, "", [box])
    assert again is not None and again.duplicate and messages(store) == before + 1


def test_delays_and_deliveries_only_change_statuses(
    store: TicketStore, box: Mailbox, sent: queries.Outgoing
) -> None:
    before = messages(store)
    delay = notice(sent.envid, (CLIENTE, "delayed", "4.4.1", "451 4.4.1 try later"), queue_id="N1")
    assert deliver(store, box, delay) == sent.ticket
    assert statuses(store, sent) == ("deferred", {CLIENTE: "deferred", GERENTE: "pending"})
    assert queries.get_outgoing(store.db, sent.id).detail == f"{CLIENTE}: 451 4.4.1 try later"
    success = notice(
        sent.envid, (CLIENTE, "delivered", "2.0.0", ""), (GERENTE, "delivered", "2.0.0", "")
    )
    assert deliver(store, box, success) == sent.ticket
    assert deliver(store, box, success) == sent.ticket  # delivered again: harmless
    assert statuses(store, sent) == ("sent", {CLIENTE: "sent", GERENTE: "sent"})
    # A delay notice that arrives late does not take a delivery back.
    assert deliver(store, box, delay) == sent.ticket
    assert statuses(store, sent)[0] == "sent"
    assert messages(store) == before


def test_a_failure_outranks_a_delivery_and_a_cancel_stays(
    store: TicketStore, box: Mailbox, sent: queries.Outgoing
) -> None:
    deliver(store, box, notice(sent.envid, (CLIENTE, "delivered", "2.0.0", "")))
    assert statuses(store, sent)[0] == "queued"
    deliver(store, box, notice(sent.envid, (GERENTE, "failed", "5.0.0", ""), queue_id="N2"))
    assert statuses(store, sent) == ("failed", {CLIENTE: "sent", GERENTE: "failed"})
    assert queries.get_outgoing(store.db, sent.id).detail == f"{GERENTE}: 5.0.0"
    assert outgoing.mark_cancelled_by_queue_id(store.db, "QOUT1") == sent.id
    deliver(store, box, notice(sent.envid, (GERENTE, "delivered", "2.0.0", ""), queue_id="N3"))
    assert statuses(store, sent)[0] == "cancelled"


def test_a_forged_notice_is_only_mail(
    store: TicketStore, box: Mailbox, sent: queries.Outgoing
) -> None:
    forged = notice(sent.envid, (CLIENTE, "delivered", "2.0.0", ""), key=b"x" * 32)
    assert read_notice(forged, KEY) is None
    before = messages(store)
    deliver(store, box, forged)
    assert statuses(store, sent)[0] == "queued"
    assert messages(store) == before + 1


def test_a_notice_only_touches_its_own_tenant(
    store: TicketStore, conn: sqlite3.Connection, sent: queries.Outgoing
) -> None:
    other = state.get_mailbox(conn, "contato@outra.helpdesk.example")
    assert other is not None
    deliver(store, other, notice(sent.envid, (CLIENTE, "delivered", "2.0.0", "")))
    assert statuses(store, sent)[0] == "queued"


def test_an_unknown_envelope_id_is_filed_as_mail(store: TicketStore, box: Mailbox) -> None:
    raw = notice("NOSUCHENVID", (CLIENTE, "failed", "5.1.1", ""))
    parsed = read_notice(raw, KEY)
    assert parsed is not None and parsed.envid == "NOSUCHENVID" and parsed.queue_id == "QOUT1"
    deliver(store, box, raw)
    assert messages(store) == 1


def test_read_notice_fields() -> None:
    raw = notice(
        "ENV1",
        ("Cliente@Example.com", "failed", "5.1.1", "550 5.1.1 unknown"),
        ("b@example.com", "delayed", "4.4.1", ""),
        ("c@example.com", "bogus", "2.0.0", ""),
    )
    parsed = read_notice(raw, KEY)
    assert parsed is not None and parsed.failed
    assert [(o.recipient, o.status, o.detail) for o in parsed.outcomes] == [
        ("cliente@example.com", "failed", "550 5.1.1 unknown"),
        ("b@example.com", "deferred", "4.4.1"),
    ]
    assert read_notice(b"Subject: hi\r\n\r\nnot a report\r\n", KEY) is None
    assert read_notice(raw.replace(b"delivery-status;", b"disposition-notification;"), KEY) is None


@pytest.mark.parametrize(
    ("current", "deliveries", "expected"),
    [
        ("queued", ["pending", "pending"], "queued"),
        ("queued", ["sent", "pending"], "queued"),
        ("queued", ["sent", "sent"], "sent"),
        ("queued", ["deferred", "sent"], "deferred"),
        ("deferred", ["deferred", "failed"], "failed"),
        ("failed", ["sent", "failed"], "failed"),
        ("cancelled", ["failed"], "cancelled"),
        ("new", ["sent"], "new"),
        ("submitting", ["failed"], "submitting"),
        ("draft", [], "draft"),
    ],
)
def test_status_precedence(current: str, deliveries: list[str], expected: str) -> None:
    assert derived_status(current, deliveries) == expected


def test_status_updates_are_final_once_sent_or_failed(
    store: TicketStore, sent: queries.Outgoing
) -> None:
    db: Database = store.db
    assert tickets_db.set_delivery(db, sent.id, CLIENTE, "deferred", "451", 1.0)
    assert tickets_db.set_delivery(db, sent.id, CLIENTE, "failed", "550", 2.0)
    assert not tickets_db.set_delivery(db, sent.id, CLIENTE, "sent", "250", 3.0)
    assert not tickets_db.set_delivery(db, sent.id, CLIENTE, "deferred", "451", 4.0)


def test_the_gateways_own_notices_are_understood(
    store: TicketStore, box: Mailbox, sent: queries.Outgoing
) -> None:
    from mxdesk.gateway.dsn import RecipientReport, build_notice
    from mxdesk.gateway.lmtp import Reply
    from mxdesk.gateway.spool import Recipient, SpoolEntry

    (row,) = store.db.query("SELECT raw FROM messages WHERE id = ?", [sent.id])
    rcpts = tuple(
        Recipient(a, a, "marca", notify="SUCCESS,FAILURE,DELAY") for a in (CLIENTE, GERENTE)
    )
    entry = SpoolEntry(
        "QOUT1",
        "out",
        0.0,
        "store",
        MAILBOX,
        10,
        "delivering",
        1,
        0.0,
        "",
        rcpts,
        row["raw"],
        envid=sent.envid,
        ret="HDRS",
    )
    reports = [RecipientReport(rcpts[1], "failed", Reply(550, "5.1.1 <gerente@example.org>: no"))]
    raw = build_notice(entry, reports, notice_id="QN9", host_name=HOST, key=KEY, now=1.0)
    assert deliver(store, box, b"X-Mxdesk-Queue-Id: QN9\r\n" + raw) == sent.ticket
    assert statuses(store, sent) == ("failed", {CLIENTE: "pending", GERENTE: "failed"})
    assert queries.get_outgoing(store.db, sent.id).detail.endswith(
        "5.1.1 <gerente@example.org>: no"
    )
