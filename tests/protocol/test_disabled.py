"""Disabled mailboxes, domains and tenants as a sending MTA and the store's submitter see them."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

import aiosmtplib
import pytest
from conftest import BASE, MAILBOX, Running, make_config, provision, wait_for
from wire import Wire, send_message, stored_messages

from mxdesk import changes, state, tenants
from mxdesk import config as cfg
from mxdesk.gateway import queuectl
from mxdesk.gateway.lmtp import Reply
from mxdesk.gateway.service import GatewayService
from mxdesk.gateway.spool import SpoolEntry

OUTRA = f"contato@outra.{BASE}"
MSG = b"From: Cliente <cliente@example.org>\r\nSubject: Antes\r\n\r\nOla\r\n"
REPLY = (
    f'From: "Suporte Marca" <{MAILBOX}>\r\nTo: cliente@example.com\r\nSubject: Re: Ajuda\r\n'
    "\r\nResolvido.\r\n"
).encode()


async def rcpt(port: int, address: str) -> str:
    w = await Wire.open(port)
    try:
        await w.hello()
        assert (await w.cmd("MAIL FROM:<cliente@example.org>")).startswith("250")
        return await w.cmd(f"RCPT TO:<{address}>")
    finally:
        await w.close()


def change(config: cfg.Config) -> sqlite3.Connection:
    """The state database as the CLI opens it, while the gateway runs."""
    return state.connect(config.general.state_db)


async def test_disabled_mailbox_answers_550_5_1_1_at_rcpt(running: Running) -> None:
    conn = change(running.config)
    changes.set_mailbox_status(conn, MAILBOX, active=False)
    assert (await rcpt(running.port, MAILBOX)).startswith("550 5.1.1")
    assert (await rcpt(running.port, "Suporte+x@marca.helpdesk.example")).startswith("550 5.1.1")
    assert (await rcpt(running.port, OUTRA)).startswith("250")
    changes.set_mailbox_status(conn, MAILBOX, active=True)
    assert (await rcpt(running.port, MAILBOX)).startswith("250")
    conn.close()


async def test_mail_accepted_before_a_mailbox_is_disabled_still_reaches_its_ticket(
    running: Running,
) -> None:
    """Regression: the store refused a disabled mailbox too, so mail the gateway had said 250
    for before the change ended held in the queue, its recipient failed for good."""
    await running.stop_store()
    reply = await send_message(running.port, "cliente@example.org", [MAILBOX], MSG)
    assert reply.startswith("250 ")
    conn = change(running.config)
    changes.set_mailbox_status(conn, MAILBOX, active=False)
    conn.close()
    await running.start_store()
    rows = await wait_for(lambda: stored_messages(running.config.store.database), what="ticket")
    assert [r["subject"] for r in rows] == ["Antes"]
    await wait_for(lambda: not queuectl.list_entries(running.config.gateway.spool_path))


async def test_disabled_domain_and_tenant_refuse_mail(running: Running) -> None:
    conn = change(running.config)
    changes.disable_domain(conn, f"marca.{BASE}")
    assert (await rcpt(running.port, MAILBOX)).startswith("550 5.7.1")
    assert (await rcpt(running.port, f"marca@{BASE}")).startswith("250")  # the default inbox
    tenants.set_tenant_status(conn, "marca", active=False)
    assert (await rcpt(running.port, f"marca@{BASE}")).startswith("550 5.1.1")
    assert (await rcpt(running.port, OUTRA)).startswith("250")
    conn.close()


class CountingDeliverer:
    """Says 250 to every attempt and remembers them."""

    def __init__(self) -> None:
        self.attempts: list[SpoolEntry] = []

    async def deliver(self, entry: SpoolEntry) -> Mapping[str, Reply]:
        self.attempts.append(entry)
        return {r.mailbox: Reply(250, "2.0.0 ok") for r in entry.pending}


async def submit(config: cfg.Config, sender: str) -> str:
    smtp = aiosmtplib.SMTP(socket_path=str(config.submission.socket), local_hostname="store")
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.mail(sender)
        await smtp.rcpt("cliente@example.com")
        return (await smtp.data(REPLY)).message
    finally:
        await smtp.quit()


@pytest.fixture
def outbound(short_tmp: Path) -> cfg.Config:
    """Replies wait a minute (the send delay) before their first attempt."""
    config = make_config(short_tmp, outbound={"send_delay": 60.0})
    provision(config, dkim=True)
    return config


@pytest.mark.parametrize("what", ["domain", "tenant"])
async def test_a_disabled_domain_or_tenant_sends_nothing_new(
    outbound: cfg.Config, what: str
) -> None:
    """Both refuse new replies; a reply queued before waits held for a disabled domain (its key
    may no longer be served) and still leaves for a disabled tenant (README, "Changing and
    removing": mail already queued from it is still delivered)."""
    deliverer = CountingDeliverer()
    service = GatewayService(outbound, outbound=deliverer)
    await service.start()
    conn = change(outbound)
    spool = outbound.gateway.spool_path
    try:
        queued = (await submit(outbound, MAILBOX)).split()[-1]
        if what == "domain":
            changes.disable_domain(conn, f"marca.{BASE}")
        else:
            tenants.set_tenant_status(conn, "marca", active=False)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await submit(outbound, MAILBOX)
        assert refused.value.code == 550 and "5.7.1" in refused.value.message
        # The reply submitted before the change, made due now.
        queuectl.retry(spool, queued)
        if what == "domain":
            entry = await wait_for(
                lambda: [e for e in queuectl.list_entries(spool) if e.state == "held"],
                what="the reply held",
            )
            assert entry[0].last_error == f"domain marca.{BASE} not active yet"
            assert deliverer.attempts == []
        else:
            await wait_for(lambda: deliverer.attempts, what="the queued reply delivered")
            assert [e.id for e in deliverer.attempts] == [queued]
            await wait_for(lambda: not queuectl.list_entries(spool), what="the queue empty")
    finally:
        conn.close()
        await service.close()
