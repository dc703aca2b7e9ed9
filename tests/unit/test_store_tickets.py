"""Filing messages in tickets.db and reading them back, through the library and the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import wait_for

from mxdesk.cli import main
from mxdesk.state import Mailbox
from mxdesk.store import queries, service
from mxdesk.store.db import open_readonly, open_tickets
from mxdesk.store.service import ThreadedFiler
from mxdesk.store.tickets import Delivery, Filed, TicketStore

SUPORTE = Mailbox("suporte@marca.example", "marca", "Suporte Marca", False, True, 0.0)
VENDAS = Mailbox("vendas@marca.example", "marca", "Vendas", False, True, 0.0)
OUTRA = Mailbox("contato@outra.example", "outra", "Outra", False, True, 0.0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tickets.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[TicketStore]:
    s = TicketStore(open_tickets(db_path), clock=lambda: 1700000000.0)
    yield s
    s.close()


def mail(queue_id: str | None, *headers: str, body: bytes = b"Ol\xe1!\r\n") -> bytes:
    lines = [f"X-Mxdesk-Queue-Id: {queue_id}"] if queue_id else []
    lines += ["From: =?iso-8859-1?q?Jo=E3o?= <joao@example.com>", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_file_reply_and_read_back(store: TicketStore, db_path: Path) -> None:
    first = mail(
        "Q1",
        "To: suporte@marca.example, ana@example.com",
        "Cc: Suporte+x@marca.example",
        "Subject: =?utf-8?q?Pedido_n=C3=A3o_chegou?=",
        "Message-ID: <p1@example.com>",
        "Content-Type: text/plain; charset=iso-8859-1",
    )
    (filed,) = store.file_all(first, "joao@example.com", [SUPORTE])
    assert filed is not None and not filed.duplicate
    reply = mail("Q2", "Subject: Re: x", "In-Reply-To: <p1@example.com>")
    (again,) = store.file_all(reply, "joao@example.com", [SUPORTE])
    assert again is not None and again.ticket == filed.ticket

    db = open_readonly(db_path)
    (summary,) = queries.list_tickets(db)
    assert (summary.number, summary.subject, summary.messages) == (
        filed.ticket,
        "Pedido não chegou",
        2,
    )
    ticket = queries.get_ticket(db, filed.ticket)
    assert ticket.requester == "joao@example.com"
    assert [(p.address, p.role) for p in ticket.participants] == [
        ("joao@example.com", "requester"),
        ("ana@example.com", "to"),
    ]
    assert ticket.messages[0].text_body.strip() == "Olá!"
    assert ticket.messages[0].from_name == "João"
    assert ticket.messages[1].message_id is None


def test_other_lmtp_clients_are_deduplicated_by_content(store: TicketStore) -> None:
    raw = mail(None, "Subject: sem fila")
    first = store.file_all(raw, "x@example.com", [SUPORTE, VENDAS])
    again = store.file_all(raw, "x@example.com", [SUPORTE])
    assert first[0] is not None and again[0] is not None
    assert again[0].duplicate and again[0].ticket == first[0].ticket
    assert len(first[0].queue_id) == 16
    count = store.db.conn.execute("SELECT count(*), count(queue_id) FROM messages").fetchone()
    assert count == (2, 0)


def test_subject_tag_needs_a_verified_participant_of_the_same_tenant(db_path: Path) -> None:
    store = TicketStore(open_tickets(db_path), host_name="mx.marca.example")
    try:
        (first,) = store.file_all(mail("Q1", "Subject: oi"), "joao@example.com", [SUPORTE])
        assert first is not None
        tag = f"Subject: Re: [#{first.ticket}] oi"
        passed = "Authentication-Results: mx.marca.example; dmarc=pass header.from=example.com"
        (joined,) = store.file_all(mail("Q2", tag, passed), "joao@example.com", [VENDAS])
        (other,) = store.file_all(mail("Q3", tag, passed), "joao@example.com", [OUTRA])
        (unverified,) = store.file_all(mail("Q5", tag), "joao@example.com", [SUPORTE])
        stranger = mail("Q4", tag, passed).replace(b"joao@example.com", b"eve@example.net")
        (new,) = store.file_all(stranger, "eve@example.net", [SUPORTE])
    finally:
        store.close()
    assert joined is not None and joined.ticket == first.ticket
    assert other is not None and other.ticket != first.ticket
    assert new is not None and new.ticket not in (first.ticket, other.ticket)
    assert unverified is not None and unverified.ticket not in (first.ticket, new.ticket)


def test_a_failing_recipient_does_not_stop_the_others(store: TicketStore) -> None:
    broken = Mailbox("x@marca.example", "marca", "X", False, True, 0.0)
    store.db.conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.recipient = 'x@marca.example'"
        " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    results = store.file_all(mail("Q1", "Subject: a"), "joao@example.com", [broken, SUPORTE])
    assert results[0] is None and results[1] is not None
    # Nothing of the failed copy was kept, not even its ticket.
    assert store.db.conn.execute("SELECT count(*) FROM tickets").fetchone() == (1,)


class SlowStore:
    """A store whose commits wait until released; it records each batch it was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.batches: list[int] = []

    def file_many(self, deliveries: Sequence[Delivery]) -> list[list[Filed | None]]:
        self.batches.append(len(deliveries))
        assert self.release.wait(10)
        return [[Filed(f"Q{len(self.batches)}", 1, False)] for _ in deliveries]


async def test_filing_outlives_a_client_that_hangs_up_and_drain_waits_for_it() -> None:
    slow = SlowStore()
    filer = ThreadedFiler(slow)  # type: ignore[arg-type]
    caller = asyncio.create_task(filer.file(b"x", "", [SUPORTE]))
    await wait_for(lambda: slow.batches, what="the first commit to start")
    (work,) = filer.running
    caller.cancel()  # the LMTP client went away mid-commit
    drained = asyncio.create_task(filer.drain())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not drained.done() and not work.done()
    slow.release.set()
    await asyncio.wait_for(drained, 10)
    assert slow.batches == [1] and work.done() and not filer.running


async def test_deliveries_that_arrive_during_a_commit_are_committed_together() -> None:
    slow = SlowStore()
    filer = ThreadedFiler(slow)  # type: ignore[arg-type]
    first = asyncio.create_task(filer.file(b"x", "", [SUPORTE]))
    await wait_for(lambda: slow.batches, what="the first commit to start")
    # While the first commit runs, ten more arrive: they wait, then share one commit.
    others = [asyncio.create_task(filer.file(b"y", "", [SUPORTE])) for _ in range(10)]
    await wait_for(lambda: len(filer._waiting) == 10, what="the ten queued behind the commit")
    assert slow.batches == [1] and not first.done()
    slow.release.set()
    assert await first == [Filed("Q1", 1, False)]
    assert [await o for o in others] == [[Filed("Q2", 1, False)]] * 10
    assert slow.batches == [1, 10]


async def test_while_deliveries_keep_coming_a_small_batch_waits_for_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after a commit a lone delivery waits a moment and shares its commit with the next
    one; an idle store files a delivery at once. (The moment is stretched to 0.3 s here, so
    that the test does not depend on the machine's speed.)"""
    monkeypatch.setattr(service, "GATHER_SECONDS", 0.3)
    store = SlowStore()
    store.release.set()
    filer = ThreadedFiler(store)  # type: ignore[arg-type]

    async def two_apart() -> None:
        second = asyncio.create_task(filer.file(b"b", "", [SUPORTE]))
        await asyncio.sleep(0.05)
        await asyncio.gather(second, filer.file(b"c", "", [SUPORTE]))

    await filer.file(b"a", "", [SUPORTE])  # idle: filed alone, at once
    await two_apart()  # busy: the second waits for the third
    assert store.batches == [1, 2]
    monkeypatch.setattr(service, "BUSY_SECONDS", 0.0)  # as if the last commit were long ago
    await two_apart()
    assert store.batches == [1, 2, 1, 1]


def cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    config = tmp_path / "mxdesk.toml"
    config.write_text(
        f'[mxdesk]\nstate_dir = "{tmp_path / "state"}"\nruntime_dir = "{tmp_path / "run"}"\n'
        'user = ""\n'
    )
    result = CliRunner().invoke(main, ["--config", str(config), "ticket", *args])
    return result.exit_code, result.output


def test_cli_without_a_database(tmp_path: Path) -> None:
    assert cli(tmp_path, "list") == (0, "no tickets yet\n")
    assert cli(tmp_path, "list", "--json") == (0, "[]\n")
    code, out = cli(tmp_path, "show", "1")
    assert code == 1 and "no tickets yet" in out


def test_cli_list_and_show(tmp_path: Path, store: TicketStore) -> None:
    raw = mail(
        "Q1",
        "Subject: Fatura \x1b[31m vermelha",
        "To: suporte@marca.example",
        "Content-Type: multipart/mixed; boundary=B",
        body=(
            b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSegue a fatura.\r\n"
            b"--B\r\nContent-Type: application/pdf\r\n"
            b'Content-Disposition: attachment; filename="../fatura.pdf"\r\n\r\n'
            + b"%PDF" * 600
            + b"\r\n--B--\r\n"
        ),
    )
    store.file_all(raw, "joao@example.com", [SUPORTE])
    store.file_all(mail("Q2", "Subject: outro"), "joao@example.com", [OUTRA])

    code, out = cli(tmp_path, "list", "--tenant", "marca")
    assert code == 0
    assert "#1" in out and "marca" in out and "#2" not in out
    code, out = cli(tmp_path, "list", "--json")
    assert [t["number"] for t in json.loads(out)] == [2, 1]

    code, out = cli(tmp_path, "show", "1")
    assert code == 0
    assert "\x1b" not in out
    assert "Segue a fatura." in out
    assert "fatura.pdf  application/pdf  2.3 KiB" in out
    assert "João <joao@example.com>" in out
    shown = json.loads(cli(tmp_path, "show", "1", "--json")[1])
    assert shown["messages"][0]["attachments"] == [
        {"filename": "fatura.pdf", "content_type": "application/pdf", "size": 2400}
    ]
    code, out = cli(tmp_path, "show", "99")
    assert code == 1 and out.strip() == "mxdesk: no ticket #99: see 'mxdesk ticket list'"


def test_a_reply_naming_only_our_message_id_joins_through_its_mac(db_path: Path) -> None:
    from mxdesk.store.compose import make_message_id

    key = b"s" * 32
    s = TicketStore(open_tickets(db_path), message_id_key=key)
    try:
        (first,) = s.file_all(mail("Q1", "Subject: Pedido"), "joao@example.com", [SUPORTE])
        assert first is not None
        ours = make_message_id(key, first.ticket, "marca.example")  # a reply never stored here
        reply = mail("Q2", "Subject: Re: Pedido", f"In-Reply-To: {ours}")
        (joined,) = s.file_all(reply, "joao@example.com", [SUPORTE])
        assert joined is not None and joined.ticket == first.ticket
        forged = mail("Q3", "Subject: Re: Pedido", f"In-Reply-To: {ours.replace('.', '-', 1)}")
        (other,) = s.file_all(forged, "joao@example.com", [SUPORTE])
        assert other is not None and other.ticket != first.ticket
    finally:
        s.close()


def test_one_copy_that_fails_in_a_batch_loses_only_itself(
    store: TicketStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = store._place

    def fussy(arrival: Any, mailbox: Mailbox) -> Any:
        if b"quebra" in arrival.raw:
            raise RuntimeError("a bug in threading")
        return place(arrival, mailbox)

    monkeypatch.setattr(store, "_place", fussy)
    batch = [
        (mail(f"Q{i}", f"Subject: {word} {i}", f"Message-ID: <m{i}@example.com>"), "", [SUPORTE])
        for i, word in enumerate(["um", "quebra", "tres"])
    ]
    ok, broken, last = store.file_many(batch)
    assert broken == [None]  # answered 451: the gateway sends it again
    assert ok[0] is not None and last[0] is not None and ok[0].ticket != last[0].ticket
    db = open_readonly(db_path)
    try:
        subjects = [t.subject for t in queries.list_tickets(db)]
    finally:
        db.close()
    assert sorted(subjects) == ["tres 2", "um 0"]


async def test_a_delivery_right_after_a_batch_ends_is_filed() -> None:
    """A batch task that has returned stays in `running` until a later turn of the loop (its
    done callbacks): a delivery in that window must start a new batch, not wait for it."""
    slow = SlowStore()
    slow.release.set()
    filer = ThreadedFiler(slow)  # type: ignore[arg-type]
    assert await filer.file(b"x", "", [SUPORTE]) == [Filed("Q1", 1, False)]
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    finished.set_result(None)
    filer.running.add(finished)  # the window: done, not yet discarded
    second = await asyncio.wait_for(filer.file(b"y", "", [SUPORTE]), 5)
    assert second == [Filed("Q2", 1, False)]
    filer.running.discard(finished)
