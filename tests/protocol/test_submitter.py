"""The store daemon hands replies to a gateway on a real Unix socket (an aiosmtpd stand-in)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import MAILBOX, wait_for
from sqlite_utils import Database

from mxdesk import config as cfg
from mxdesk import operators, state
from mxdesk.secrets import installation_key
from mxdesk.store import db as tickets_db
from mxdesk.store import outgoing, queries
from mxdesk.store.outgoing import ReplyRequest
from mxdesk.store.service import start_store
from mxdesk.store.submitter import Outbox, Submitter
from mxdesk.store.tickets import TicketStore

CLIENTE, GERENTE = "cliente@example.com", "gerente@example.org"
DSN_PARAMETERS = ("RET=", "ENVID=", "NOTIFY=", "ORCPT=")


class Gateway:
    """Records what the submitter sends and answers as told; 250 'queued as Q<n>' by default."""

    def __init__(self) -> None:
        self.ehlo: list[str] = []
        self.mail: list[str] = []
        self.rcpt: list[str] = []
        self.data: list[bytes] = []
        self.answers: dict[str, str] = {}  # "MAIL", "DATA" or a recipient -> reply
        self.server: asyncio.Server | None = None
        self.sessions: list[DsnSMTP] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, host: str, responses: list[str]
    ) -> list[str]:
        self.ehlo.append(host)
        session.host_name = host
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if "MAIL" in self.answers:
            return self.answers["MAIL"]
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.answers:
            return self.answers[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if "DATA" in self.answers:
            return self.answers["DATA"]
        self.data.append(envelope.original_content or b"")
        return f"250 2.0.0 Ok: queued as Q{len(self.data)}"

    async def start(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def session() -> DsnSMTP:
            smtp = DsnSMTP(self)
            self.sessions.append(smtp)
            return smtp

        self.server = await loop.create_unix_server(session, path=str(path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            # wait_closed waits for every connection: a submitter that still holds one (its
            # fixture is torn down after this one) must not hang the test's teardown.
            for smtp in self.sessions:
                if smtp.transport is not None:
                    smtp.transport.close()
            await asyncio.wait_for(self.server.wait_closed(), 10)


class DsnSMTP(SMTP):
    """aiosmtpd refuses MAIL and RCPT parameters it does not know: record them, then strip."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway, hostname="gw.example")
        self.gateway = gateway

    async def smtp_MAIL(self, arg: str) -> None:
        self.gateway.mail.append(arg)
        await super().smtp_MAIL(_strip(arg))

    async def smtp_RCPT(self, arg: str) -> None:
        self.gateway.rcpt.append(arg)
        await super().smtp_RCPT(_strip(arg))


def _strip(arg: str) -> str:
    return " ".join(w for w in (arg or "").split() if not w.upper().startswith(DSN_PARAMETERS))


@pytest.fixture
def db(config: cfg.Config) -> Iterator[Database]:
    d = tickets_db.open_tickets(config.store.database)
    yield d
    d.close()


@pytest.fixture
async def gateway(config: cfg.Config) -> AsyncIterator[Gateway]:
    g = Gateway()
    yield g
    await g.stop()


@pytest.fixture
def reply(config: cfg.Config, db: Database) -> Any:
    """Writes a reply to ticket 1 (cliente@, Cc gerente@) as `mxdesk ticket reply` would."""
    conn = state.connect(config.general.state_db)
    operators.add_operator(conn, "marca", "Ana", "Ana")
    box = state.get_mailbox(conn, MAILBOX)
    assert box is not None
    key = installation_key(config.general.state_dir)
    first = f"X-Mxdesk-Queue-Id: QIN\r\nFrom: {CLIENTE}\r\nSubject: Oi\r\n\r\nOi\r\n".encode()
    TicketStore(db, message_id_key=key).file_all(first, CLIENTE, [box])

    def write(body: str = "Olá, já saiu.") -> queries.Outgoing:
        request = ReplyRequest(1, "Ana", body, cc=[GERENTE])
        return outgoing.create_reply(db, conn, key, request)

    yield write
    conn.close()


@pytest.fixture
async def submitter(config: cfg.Config) -> AsyncIterator[Submitter]:
    own = tickets_db.open_tickets(config.store.database)
    s = Submitter(
        Outbox(own, backoff=(0.01, 0.05)),
        config.submission.socket,
        config.general.host_name,
        poll_interval=0.01,
    )
    yield s
    await s.close()
    own.close()


def status(db: Database, out: queries.Outgoing) -> queries.Outgoing:
    return queries.get_outgoing(db, out.id)


async def settled(db: Database, out: queries.Outgoing) -> queries.Outgoing:
    """The message once the submitter is done with it (handed over, refused or retrying)."""

    def done() -> queries.Outgoing | None:
        now = status(db, out)
        return None if now.status in ("new", "submitting") and not now.submit_attempts else now

    result: queries.Outgoing = await wait_for(done, what=f"message {out.id} handed over")
    return result


async def test_hands_over_with_dsn_parameters(
    config: cfg.Config, db: Database, gateway: Gateway, submitter: Submitter, reply: Any
) -> None:
    await gateway.start(config.submission.socket)
    out = reply()
    submitter.start()
    done = await settled(db, out)
    assert (done.status, done.queue_id, done.detail) == ("queued", "Q1", "")
    assert gateway.ehlo == [config.general.host_name]
    assert gateway.mail == [f"FROM:<{MAILBOX}> RET=HDRS ENVID={out.envid} BODY=8BITMIME"]
    assert gateway.rcpt == [
        f"TO:<{CLIENTE}> NOTIFY=SUCCESS,FAILURE,DELAY",
        f"TO:<{GERENTE}> NOTIFY=SUCCESS,FAILURE,DELAY",
    ]
    (row,) = db.query("SELECT raw FROM messages WHERE id = ?", [out.id])
    assert gateway.data == [row["raw"]]
    ascii_only = reply("Ola")
    assert (await settled(db, ascii_only)).queue_id == "Q2"
    assert not gateway.mail[-1].endswith("8BITMIME")


async def test_a_refused_recipient_fails_and_the_others_go_on(
    config: cfg.Config, db: Database, gateway: Gateway, submitter: Submitter, reply: Any
) -> None:
    gateway.answers[GERENTE] = "550 5.1.1 <gerente@example.org>: no such user"
    await gateway.start(config.submission.socket)
    out = reply()
    submitter.start()
    done = await settled(db, out)
    assert (done.status, done.queue_id) == ("failed", "Q1")
    assert {d.recipient: d.status for d in done.deliveries} == {
        CLIENTE: "pending",
        GERENTE: "failed",
    }
    assert done.detail == f"{GERENTE}: 550 5.1.1 <gerente@example.org>: no such user"


@pytest.mark.parametrize("command", ["MAIL", "DATA"])
async def test_a_permanent_refusal_fails_the_reply(
    config: cfg.Config,
    db: Database,
    gateway: Gateway,
    submitter: Submitter,
    reply: Any,
    command: str,
) -> None:
    gateway.answers[command] = "554 5.7.1 Message refused: no DKIM key"
    await gateway.start(config.submission.socket)
    out = reply()
    submitter.start()
    done = await settled(db, out)
    assert done.status == "failed" and done.queue_id == ""
    assert [d.status for d in done.deliveries] == ["failed", "failed"]
    assert "554 5.7.1 Message refused: no DKIM key" in done.detail


async def test_a_temporary_refusal_is_tried_again(
    config: cfg.Config, db: Database, gateway: Gateway, submitter: Submitter, reply: Any
) -> None:
    gateway.answers["DATA"] = "451 4.3.0 Temporary failure"
    await gateway.start(config.submission.socket)
    out = reply()
    submitter.start()
    waiting = await settled(db, out)
    assert waiting.status in ("new", "submitting")
    assert waiting.detail == "gateway deferred it: 451 4.3.0 Temporary failure"
    del gateway.answers["DATA"]
    done = await wait_for(lambda: status(db, out).status == "queued" and status(db, out))
    assert done.queue_id == "Q1" and done.submit_attempts >= 2 and done.detail == ""


async def test_a_gateway_that_is_down_gets_the_reply_once_it_is_up(
    config: cfg.Config, db: Database, gateway: Gateway, submitter: Submitter, reply: Any
) -> None:
    out = reply()
    submitter.start()
    waiting = await settled(db, out)
    # Tried again every 10-50 ms: it may be claimed for the next try already.
    assert waiting.status in ("new", "submitting")
    assert waiting.detail == "gateway not reachable: No such file or directory"
    await gateway.start(config.submission.socket)
    done = await wait_for(lambda: status(db, out).status == "queued" and status(db, out))
    assert done.queue_id == "Q1" and len(gateway.data) == 1


async def test_a_hand_over_cut_by_a_crash_is_done_again_at_start(
    config: cfg.Config, db: Database, gateway: Gateway, submitter: Submitter, reply: Any
) -> None:
    out = reply()
    (claimed,) = Outbox(db).claim()  # the daemon that claimed it died
    assert status(db, out).status == "submitting"
    await gateway.start(config.submission.socket)
    submitter.start()
    done = await wait_for(lambda: status(db, out).status == "queued" and status(db, out))
    assert done.queue_id == "Q1" and gateway.data == [claimed.raw]


async def test_the_store_daemon_hands_over_and_stops_cleanly(
    config: cfg.Config, db: Database, gateway: Gateway, reply: Any
) -> None:
    await gateway.start(config.submission.socket)
    service = await start_store(config, poll_interval=0.01, backoff=(0.01, 0.05))
    try:
        out = reply()
        done = await wait_for(lambda: status(db, out).status == "queued" and status(db, out))
        assert done.queue_id == "Q1"
    finally:
        await service.close()
    assert reply().status == "new"  # written while the daemon is down: it waits for it


def test_a_claimed_message_is_claimed_once(config: cfg.Config, db: Database, reply: Any) -> None:
    reply()
    other = tickets_db.open_tickets(config.store.database)
    try:
        first, second = Outbox(db), Outbox(other)
        assert len(first.claim()) == 1
        assert second.claim() == []
        assert first.recover() == 1 and len(second.claim()) == 1
    finally:
        other.close()
