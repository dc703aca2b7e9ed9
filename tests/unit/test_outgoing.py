"""Replies and new tickets as stored for the gateway, and cancelling them."""

from __future__ import annotations

import email
import re
import sqlite3
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlite_utils import Database

from mxdesk import changes, operators, state
from mxdesk import config as cfg
from mxdesk.gateway.spool import NewEntry, Recipient, Spool, new_queue_id
from mxdesk.store import db as tickets_db
from mxdesk.store import outgoing, queries
from mxdesk.store.compose import ticket_of_message_id
from mxdesk.store.outgoing import Limits, NewTicketRequest, OutgoingError, ReplyRequest
from mxdesk.store.parse import Attachment
from mxdesk.store.submitter import Outbox, Result
from mxdesk.store.tickets import TicketStore

KEY = b"k" * 32
MAILBOX = "suporte@marca.helpdesk.example"


@pytest.fixture
def conn(config: cfg.Config) -> Iterator[sqlite3.Connection]:
    c = state.connect(config.general.state_db)
    operators.add_operator(c, "marca", "Ana", "Ana Souza\nSuporte Marca")
    operators.add_operator(c, "marca", "Beto", "")
    operators.set_generic_signature(c, "marca", "Equipe Marca")
    operators.add_operator(c, "outra", "Olga", "Olga")
    yield c
    c.close()


@pytest.fixture
def db(config: cfg.Config) -> Iterator[Database]:
    d = tickets_db.open_tickets(config.store.database)
    yield d
    d.close()


def inbound(db: Database, conn: sqlite3.Connection, queue_id: str, *headers: str) -> int:
    """Files a customer's message through the store, as the LMTP server would."""
    box = state.get_mailbox(conn, MAILBOX)
    assert box is not None
    raw = "\r\n".join(
        [f"X-Mxdesk-Queue-Id: {queue_id}", "From: João <joao@example.com>", *headers, "", "Oi"]
    ).encode()
    (filed,) = TicketStore(db, message_id_key=KEY).file_all(raw, "joao@example.com", [box])
    assert filed is not None
    return filed.ticket


@pytest.fixture
def ticket(db: Database, conn: sqlite3.Connection) -> int:
    number = inbound(
        db, conn, "Q1", "Subject: Pedido atrasado [#7]", "Message-ID: <p1@example.com>"
    )
    later = ["Subject: Re: Pedido", "Message-ID: <p2@example.com>", "References: <p1@example.com>"]
    assert inbound(db, conn, "Q2", *later, "In-Reply-To: <p1@example.com>") == number
    return number


def reply(db: Database, conn: sqlite3.Connection, number: int, **kw: object) -> queries.Outgoing:
    fields = {"ticket": number, "operator": "Ana", "body": "Já saiu."} | kw
    return outgoing.create_reply(db, conn, KEY, ReplyRequest(**fields))  # type: ignore[arg-type]


def stored(db: Database, message: int) -> EmailMessage:
    (row,) = db.query("SELECT raw FROM messages WHERE id = ?", [message])
    msg = email.message_from_bytes(row["raw"], policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def plain(db: Database, message: int) -> str:
    body = stored(db, message).get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def test_a_reply_as_the_customer_receives_it(
    db: Database, conn: sqlite3.Connection, ticket: int
) -> None:
    pdf = Attachment("nota.pdf", "application/pdf", b"%PDF-1.4")
    out = reply(db, conn, ticket, cc=["Gerente@Example.org"], attachments=[pdf])
    msg = stored(db, out.id)
    sender = msg["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Suporte Marca", MAILBOX)
    assert msg["To"] == "joao@example.com"
    assert msg["Cc"] == "gerente@example.org"
    assert msg["Subject"] == "Re: Pedido atrasado [#7]"
    assert msg["In-Reply-To"] == "<p2@example.com>"
    assert msg["References"] == "<p1@example.com> <p2@example.com>"
    assert ticket_of_message_id(KEY, msg["Message-ID"]) == ticket
    assert msg["Date"] and msg["MIME-Version"] == "1.0" and msg["Auto-Submitted"] is None
    assert plain(db, out.id).endswith("Já saiu.\n\n-- \nAna Souza\nSuporte Marca\n")
    assert "Já saiu." in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert [(a.get_filename(), a.get_content()) for a in msg.iter_attachments()] == [
        ("nota.pdf", b"%PDF-1.4")
    ]
    assert out.status == "new" and out.operator == "Ana" and out.message_id == msg["Message-ID"]
    assert re.fullmatch(r"[A-Z0-9]{24}", out.envid)
    assert [(d.recipient, d.status) for d in out.deliveries] == [
        ("joao@example.com", "pending"),
        ("gerente@example.org", "pending"),
    ]
    (row,) = db.query("SELECT idempotency_key, next_submit FROM messages WHERE id = ?", [out.id])
    assert row["idempotency_key"] == f"out:{out.envid}"
    shown = queries.get_ticket(db, ticket)
    assert shown.messages[-1].direction == "out"
    assert shown.messages[-1].attachments[0].filename == "nota.pdf"
    assert ("gerente@example.org", "cc") in [(p.address, p.role) for p in shown.participants]
    assert queries.list_tickets(db)[0].pending_replies == 1


def test_a_reply_answers_the_last_message_a_person_wrote(
    db: Database, conn: sqlite3.Connection, ticket: int
) -> None:
    bounce = ["Subject: falha", "Message-ID: <b1@mx.example>", "In-Reply-To: <p2@example.com>"]
    assert inbound(db, conn, "Q3", *bounce, "Auto-Submitted: auto-replied") == ticket
    assert stored(db, reply(db, conn, ticket).id)["In-Reply-To"] == "<p2@example.com>"


def test_signatures_follow_the_mailbox_switches(
    db: Database, conn: sqlite3.Connection, ticket: int
) -> None:
    assert plain(db, reply(db, conn, ticket, operator="Beto").id).endswith("-- \nEquipe Marca\n")
    changes.set_mailbox(conn, MAILBOX, operator_signatures=False)
    assert plain(db, reply(db, conn, ticket).id).endswith("-- \nEquipe Marca\n")
    changes.set_mailbox(conn, MAILBOX, operator_signatures=False, generic_signature=False)
    assert "-- \n" not in plain(db, reply(db, conn, ticket).id)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"operator": "Olga"}, "no operator 'Olga' in tenant 'marca'"),
        ({"ticket": 99}, "no ticket #99"),
        ({"body": " \n\n"}, "has no text"),
        ({"body": "a\x1b[31mb"}, "control characters"),
        ({"cc": ["nobody"]}, "cc: 'nobody' is not an e-mail address"),
    ],
)
def test_reply_errors(
    db: Database, conn: sqlite3.Connection, ticket: int, change: dict[str, object], message: str
) -> None:
    with pytest.raises((OutgoingError, queries.TicketNotFound), match=re.escape(message)):
        reply(db, conn, ticket, **change)
    assert db.execute("SELECT count(*) FROM messages WHERE direction = 'out'").fetchone() == (0,)


def test_limits_are_the_gateways(db: Database, conn: sqlite3.Connection, ticket: int) -> None:
    cc = [f"c{i}@example.org" for i in range(9)]
    request = ReplyRequest(ticket, "Ana", "oi", cc=cc)
    out = outgoing.create_reply(db, conn, KEY, request, Limits(max_recipients=10))
    assert len(out.deliveries) == 10
    more = ReplyRequest(ticket, "Ana", "oi", cc=[*cc, "c9@example.org"])
    with pytest.raises(OutgoingError, match="11 recipients: the gateway takes at most 10"):
        outgoing.create_reply(db, conn, KEY, more, Limits(max_recipients=10))
    size = len(db.execute("SELECT raw FROM messages WHERE id = ?", [out.id]).fetchone()[0])
    with pytest.raises(OutgoingError, match="the gateway accepts at most"):
        outgoing.create_reply(db, conn, KEY, request, Limits(max_size=size // 2))


def new_ticket(db: Database, conn: sqlite3.Connection, **kw: object) -> queries.Outgoing:
    fields = {
        "tenant": "marca",
        "mailbox": MAILBOX,
        "to": ["Cliente@Example.com", "socio@example.com"],
        "cc": ["gerente@example.org"],
        "subject": "  Sua  fatura ",
        "body": "Segue a fatura.",
    }
    return outgoing.create_ticket(db, conn, KEY, NewTicketRequest(**fields | kw))  # type: ignore[arg-type]


def test_a_new_ticket_writes_first(db: Database, conn: sqlite3.Connection) -> None:
    out = new_ticket(db, conn)
    msg = stored(db, out.id)
    assert msg["Subject"] == "Sua fatura"
    assert msg["To"] == "cliente@example.com, socio@example.com"
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert ticket_of_message_id(KEY, msg["Message-ID"]) == out.ticket
    assert plain(db, out.id).endswith("-- \nEquipe Marca\n")
    t = queries.get_ticket(db, out.ticket)
    assert (t.tenant, t.mailbox, t.subject, t.requester) == (
        "marca",
        MAILBOX,
        "Sua fatura",
        "cliente@example.com",
    )
    assert [(p.address, p.role) for p in t.participants] == [
        ("cliente@example.com", "requester"),
        ("socio@example.com", "to"),
        ("gerente@example.org", "cc"),
    ]
    assert out.status == "new" and len(out.deliveries) == 3
    signed = new_ticket(db, conn, operator="Ana")
    assert plain(db, signed.id).endswith("-- \nAna Souza\nSuporte Marca\n")


def test_a_new_ticket_without_sending_keeps_a_draft(db: Database, conn: sqlite3.Connection) -> None:
    out = new_ticket(db, conn, send=False)
    assert out.status == "draft" and out.deliveries == []
    assert Outbox(db).claim() == []
    with pytest.raises(OutgoingError, match="is a draft"):
        outgoing.cancel(db, Path("/nonexistent"), out.id)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subject": " "}, "needs a subject"),
        ({"subject": "x" * 999}, "at most 998"),
        ({"to": []}, "needs a recipient"),
        ({"mailbox": "contato@outra.helpdesk.example"}, "is not a mailbox of tenant 'marca'"),
        ({"tenant": "ninguem"}, "no tenant 'ninguem'"),
        ({"operator": "Olga"}, "no operator 'Olga'"),
    ],
)
def test_new_ticket_errors(
    db: Database, conn: sqlite3.Connection, change: dict[str, object], message: str
) -> None:
    with pytest.raises(OutgoingError, match=re.escape(message)):
        new_ticket(db, conn, **change)
    assert db.execute("SELECT count(*) FROM tickets").fetchone() == (0,)


def test_a_disabled_mailbox_does_not_send(db: Database, conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE mailboxes SET active = 0 WHERE address = ?", [MAILBOX])
    with pytest.raises(OutgoingError, match="is disabled"):
        new_ticket(db, conn)


def test_cancel_before_the_hand_over(db: Database, conn: sqlite3.Connection, ticket: int) -> None:
    out = reply(db, conn, ticket)
    cancelled = outgoing.cancel(db, Path("/nonexistent"), out.id)
    assert cancelled.status == "cancelled"
    assert [d.status for d in cancelled.deliveries] == ["cancelled"]
    assert Outbox(db).claim() == []
    with pytest.raises(OutgoingError, match=f"message {out.id} was already cancelled"):
        outgoing.cancel(db, Path("/nonexistent"), out.id)
    with pytest.raises(queries.NotOutgoing, match="is an incoming message"):
        outgoing.cancel(db, Path("/nonexistent"), 1)


def test_cancel_refuses_what_cannot_be_stopped(
    db: Database, conn: sqlite3.Connection, ticket: int
) -> None:
    out = reply(db, conn, ticket)
    (claimed,) = Outbox(db).claim()
    with pytest.raises(OutgoingError, match="being handed to the gateway; try again"):
        outgoing.cancel(db, Path("/nonexistent"), out.id)
    Outbox(db).finish(claimed, Result(queue_id="Q9"))
    tickets_db.set_delivery(db, out.id, "joao@example.com", "sent", "250 ok", 0.0)
    assert tickets_db.refresh_status(db, out.id) == "sent"
    with pytest.raises(OutgoingError, match=f"message {out.id} was already sent"):
        outgoing.cancel(db, Path("/nonexistent"), out.id)


async def test_cancel_a_queued_reply_removes_it_from_the_spool(
    db: Database, conn: sqlite3.Connection, ticket: int, config: cfg.Config
) -> None:
    from mxdesk.gateway import queuectl

    out = reply(db, conn, ticket)
    (claimed,) = Outbox(db).claim()
    spool = Spool(config.gateway.spool_path)
    await spool.open()
    queue_id = new_queue_id()
    rcpt = Recipient("joao@example.com", "joao@example.com", "marca")
    await spool.commit(NewEntry(queue_id, "out", "store", MAILBOX, [rcpt], claimed.raw))
    await spool.close()
    Outbox(db).finish(claimed, Result(queue_id=queue_id))

    missing = reply(db, conn, ticket)
    (other,) = Outbox(db).claim()
    Outbox(db).finish(other, Result(queue_id="GONE1"))
    with pytest.raises(OutgoingError, match=f"message {missing.id}: no queue entry GONE1"):
        outgoing.cancel(db, config.gateway.spool_path, missing.id)

    done = outgoing.cancel(db, config.gateway.spool_path, out.id)
    assert done.status == "cancelled" and done.detail == "removed from the gateway's queue"
    with pytest.raises(queuectl.QueueControlError):
        queuectl.show(config.gateway.spool_path, queue_id)


def test_a_cancelled_queue_entry_marks_its_reply(
    db: Database, conn: sqlite3.Connection, ticket: int
) -> None:
    out = reply(db, conn, ticket)
    (claimed,) = Outbox(db).claim()
    Outbox(db).finish(claimed, Result(queue_id="QX1"))
    assert outgoing.mark_cancelled_by_queue_id(db, "QX1") == out.id
    assert queries.get_outgoing(db, out.id).status == "cancelled"
    assert outgoing.mark_cancelled_by_queue_id(db, "Q1") is None  # an inbound queue id
    assert outgoing.mark_cancelled_by_queue_id(db, "NOPE") is None


def test_attachment_from_path(tmp_path: Path) -> None:
    (tmp_path / "fatura.pdf").write_bytes(b"%PDF")
    (tmp_path / "logs.tar.gz").write_bytes(b"\x1f\x8b")
    assert outgoing.attachment_from_path(tmp_path / "fatura.pdf") == Attachment(
        "fatura.pdf", "application/pdf", b"%PDF"
    )
    assert outgoing.attachment_from_path(tmp_path / "logs.tar.gz").content_type == (
        "application/octet-stream"
    )
    with pytest.raises(OutgoingError, match=r"cannot read .*nada\.txt: No such file"):
        outgoing.attachment_from_path(tmp_path / "nada.txt")
