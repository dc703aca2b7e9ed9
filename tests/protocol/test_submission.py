"""The submission socket and the outbound runner, with a deliverer that answers as told."""

from __future__ import annotations

import asyncio
import email
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from email.policy import default
from pathlib import Path

import aiosmtplib
import dkim
import pytest
from conftest import BASE, MAILBOX, provision, wait_for

from mxdesk import config as cfg
from mxdesk import dkimkeys, state
from mxdesk.gateway import queuectl
from mxdesk.gateway.dkim import load_key
from mxdesk.gateway.lmtp import Reply
from mxdesk.gateway.queuectl import QueueControlError, list_entries
from mxdesk.gateway.service import GatewayService
from mxdesk.gateway.spool import SpoolEntry
from mxdesk.secrets import installation_key, is_notice_message_id

MESSAGE = (
    f'From: "Suporte Marca" <{MAILBOX}>\r\n'
    "To: cliente@example.com\r\n"
    "Subject: Re: [#1] impressora\r\n"
    "Message-ID: <t1.aaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbb@marca.helpdesk.example>\r\n"
    "\r\n"
    "Olá, resolvido.\n"  # a bare LF: normalised before signing
).encode()


class ScriptedDeliverer:
    """Answers each attempt with the next scripted reply per recipient; records attempts."""

    def __init__(self, *script: Mapping[str, Reply] | Reply) -> None:
        self.script = list(script)
        self.attempts: list[SpoolEntry] = []

    async def deliver(self, entry: SpoolEntry) -> Mapping[str, Reply]:
        self.attempts.append(entry)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Reply):
            return {r.mailbox: step for r in entry.pending}
        return {r.mailbox: step[r.mailbox] for r in entry.pending}


def outbound_config(
    root: Path, retry: Mapping[str, object] | None = None, **outbound: object
) -> cfg.Config:
    data = {
        "mxdesk": {
            "base_domain": BASE,
            "state_dir": str(root / "state"),
            "runtime_dir": str(root / "run"),
        },
        "gateway": {
            "listen": ["127.0.0.1:0"],
            "outbound": {"send_delay": 0.0, **outbound},
            "outbound_retry": {
                "initial": 0.05,
                "maximum": 0.2,
                "hold_after": 30.0,
                **(retry or {}),
            },
        },
    }
    config = cfg.parse(data)
    provision(config, dkim=True)
    return config


async def start(config: cfg.Config, deliverer: ScriptedDeliverer) -> GatewayService:
    service = GatewayService(config, outbound=deliverer)
    await service.start()
    return service


async def submit(
    config: cfg.Config,
    sender: str = MAILBOX,
    rcpts: tuple[str, ...] = ("cliente@example.com",),
    notify: str = "SUCCESS,FAILURE,DELAY",
    message: bytes = MESSAGE,
) -> str:
    smtp = aiosmtplib.SMTP(socket_path=str(config.submission.socket), local_hostname="store.local")
    await smtp.connect()
    try:
        await smtp.ehlo()
        assert smtp.supports_extension("dsn")
        await smtp.mail(sender, options=["RET=HDRS", "ENVID=abc123XYZ"])
        for rcpt in rcpts:
            await smtp.rcpt(rcpt, options=[f"NOTIFY={notify}"])
        reply = await smtp.data(message)
        return reply.message
    finally:
        await smtp.quit()


@pytest.fixture
def config(short_tmp: Path) -> cfg.Config:
    return outbound_config(short_tmp, send_delay=60.0)


@pytest.fixture
async def held_gateway(config: cfg.Config) -> AsyncIterator[GatewayService]:
    """A gateway whose outbound entries wait a minute (the send delay) before any attempt."""
    service = await start(config, ScriptedDeliverer(Reply(250, "2.0.0 ok")))
    yield service
    await service.close()


def dkim_dns(config: cfg.Config) -> dict[bytes, bytes]:
    conn = state.connect(config.general.state_db)
    records = {}
    for key_record in dkimkeys.keys_of(conn, f"marca.{BASE}"):
        key = load_key(Path(key_record.path).read_bytes(), key_record.domain, key_record.selector)
        records[f"{key.selector}._domainkey.{key.domain}.".encode()] = key.dns_txt().encode()
    conn.close()
    return records


async def test_submission_queues_the_message_with_dsn_requests(
    config: cfg.Config, held_gateway: GatewayService
) -> None:
    reply = await submit(config, rcpts=("cliente@example.com", "outro@Example.ORG"))
    assert reply.startswith("2.0.0 Ok: queued as ")
    queue_id = reply.split()[-1]
    [entry] = list_entries(config.gateway.spool_path)
    assert (entry.id, entry.kind, entry.envid, entry.ret) == (queue_id, "out", "abc123XYZ", "HDRS")
    assert [(r.mailbox, r.tenant, r.notify) for r in entry.recipients] == [
        ("cliente@example.com", "marca", "SUCCESS,FAILURE,DELAY"),
        ("outro@example.org", "marca", "SUCCESS,FAILURE,DELAY"),
    ]
    assert entry.next_attempt >= entry.created + 59  # the send delay
    data = queuectl.show(config.gateway.spool_path, queue_id).data
    assert b"\r\nOl\xc3\xa1, resolvido.\r\n" in data
    # Signed as it leaves, with the keys that sign then: not while it waits.
    assert b"DKIM-Signature" not in data


async def test_every_attempt_is_signed_with_the_keys_that_sign_then(short_tmp: Path) -> None:
    config = outbound_config(short_tmp)
    deliverer = ScriptedDeliverer(Reply(451, "4.7.1 try later"), Reply(250, "2.0.0 ok"))
    service = await start(config, deliverer)
    try:
        await submit(config)
        await wait_for(lambda: len(deliverer.attempts) == 2, what="two attempts")
    finally:
        await service.close()
    records = dkim_dns(config)
    for attempt in deliverer.attempts:
        assert attempt.data.count(b"DKIM-Signature:") == 1
        assert b"d=marca.helpdesk.example" in attempt.data
        assert dkim.verify(attempt.data, dnsfunc=lambda name, timeout=5: records[name])


@pytest.mark.parametrize(
    ("sender", "code"),
    [
        ("alguem@example.com", 550),  # not a hosted domain
        ("suporte@nao.helpdesk.example", 550),
        ("<>", 550),
    ],
)
async def test_senders_outside_the_tenants_are_refused(
    config: cfg.Config, held_gateway: GatewayService, sender: str, code: int
) -> None:
    smtp = aiosmtplib.SMTP(socket_path=str(config.submission.socket), local_hostname="store.local")
    await smtp.connect()
    await smtp.ehlo()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
        await smtp.mail("" if sender == "<>" else sender)
    assert info.value.code == code
    assert "5.7.1" in info.value.message
    await smtp.quit()
    assert list_entries(config.gateway.spool_path) == []


async def test_a_refused_sender_is_logged_with_its_address(
    config: cfg.Config, held_gateway: GatewayService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mxdesk.gateway.submission")
    smtp = aiosmtplib.SMTP(socket_path=str(config.submission.socket), local_hostname="store.local")
    await smtp.connect()
    await smtp.ehlo()
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await smtp.mail("alguem@example.com")
    await smtp.quit()
    refusals = [r.getMessage() for r in caplog.records if "refused:" in r.getMessage()]
    assert refusals and refusals[0].startswith("submission from=<alguem@example.com> refused: 550")


async def test_bad_dsn_parameters_are_syntax_errors(
    config: cfg.Config, held_gateway: GatewayService
) -> None:
    smtp = aiosmtplib.SMTP(socket_path=str(config.submission.socket), local_hostname="store.local")
    await smtp.connect()
    await smtp.ehlo()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
        await smtp.mail(MAILBOX, options=["RET=MAYBE"])
    assert info.value.code == 501
    await smtp.mail(MAILBOX)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as rinfo:
        await smtp.rcpt("a@example.com", options=["NOTIFY=NEVER,SUCCESS"])
    assert rinfo.value.code == 501
    await smtp.quit()


class BlockingDeliverer(ScriptedDeliverer):
    """Holds every attempt until released, so a test can act while an entry is in flight."""

    def __init__(self) -> None:
        super().__init__(Reply(250, "2.0.0 ok"))
        self.release = asyncio.Event()

    async def deliver(self, entry: SpoolEntry) -> Mapping[str, Reply]:
        self.attempts.append(entry)
        await self.release.wait()
        return {r.mailbox: Reply(250, "2.0.0 ok") for r in entry.pending}


async def test_cancel_during_the_send_delay_but_not_while_delivering(short_tmp: Path) -> None:
    config = outbound_config(short_tmp, send_delay=60.0)
    deliverer = BlockingDeliverer()
    service = await start(config, deliverer)
    spool = config.gateway.spool_path
    try:
        first = (await submit(config)).split()[-1]
        second = (await submit(config)).split()[-1]
        queuectl.cancel(spool, first)
        assert [e.id for e in list_entries(spool)] == [second]
        with pytest.raises(QueueControlError, match="has left the spool: it was cancelled by "):
            queuectl.cancel(spool, first)
        queuectl.hold(spool, second)
        assert list_entries(spool)[0].last_error == "held by an administrator"
        queuectl.release(spool, second)  # due at once, send delay or not
        await wait_for(lambda: deliverer.attempts, what="the attempt to start")
        # The hold's reason went with it: nothing says the entry is held any more.
        assert (list_entries(spool)[0].state, list_entries(spool)[0].last_error) == (
            "delivering",
            "",
        )
        with pytest.raises(QueueControlError, match="being delivered right now"):
            queuectl.cancel(spool, second)
        deliverer.release.set()
        await wait_for(
            lambda: all(e.kind == "in" for e in list_entries(spool)), what="the entry delivered"
        )
        assert [e.id for e in deliverer.attempts] == [second]
    finally:
        deliverer.release.set()
        await service.close()


async def test_a_reply_whose_keys_are_gone_when_it_leaves_is_held_unsent(short_tmp: Path) -> None:
    """Keys are looked up again as a reply leaves: one queued while its domain had keys, whose
    keys (its domain's and the base domain's) are all gone by then, is held, never sent
    unsigned."""
    config = outbound_config(short_tmp, send_delay=60.0)
    deliverer = ScriptedDeliverer(Reply(250, "2.0.0 ok"))
    service = await start(config, deliverer)
    spool = config.gateway.spool_path
    try:
        queue_id = (await submit(config)).split()[-1]
        conn = state.connect(config.general.state_db)
        for domain in (f"marca.{BASE}", BASE):
            for key in dkimkeys.keys_of(conn, domain):
                dkimkeys.forget_key(conn, key)
        conn.close()
        queuectl.hold(spool, queue_id)
        queuectl.release(spool, queue_id)  # due at once
        await wait_for(
            lambda: list_entries(spool)[0].state == "held", what="the reply held as it leaves"
        )
        [entry] = list_entries(spool)
        assert entry.id == queue_id
        assert entry.last_error == f"no DKIM key signs for marca.{BASE} or the base domain"
        assert deliverer.attempts == []
    finally:
        await service.close()


def notices(config: cfg.Config) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(
            queuectl.show(config.gateway.spool_path, e.id).data, policy=default
        )
        for e in list_entries(config.gateway.spool_path)
        if e.kind == "in"
    ]


def report_fields(notice: email.message.EmailMessage) -> list[dict[str, str]]:
    part = list(notice.iter_parts())[1]
    return [dict(block) for block in part.get_payload()]


async def test_permanent_failure_makes_one_failure_notice_and_no_retry(short_tmp: Path) -> None:
    config = outbound_config(short_tmp)
    deliverer = ScriptedDeliverer(Reply(550, "5.1.1 <cliente@example.com>: user unknown"))
    service = await start(config, deliverer)  # the store is not running: the notice waits
    try:
        queue_id = (await submit(config)).split()[-1]
        await wait_for(lambda: len(notices(config)) == 1, what="one notice")
        assert all(e.kind == "in" for e in list_entries(config.gateway.spool_path))
        [notice] = notices(config)
        assert notice["To"].addresses[0].addr_spec == MAILBOX
        assert notice["Auto-Submitted"] == "auto-replied"
        assert is_notice_message_id(
            installation_key(config.general.state_dir), notice["Message-ID"]
        )
        head, rcpt = report_fields(notice)
        assert head["Original-Envelope-Id"] == "abc123XYZ"
        assert head["X-Mxdesk-Queue-Id"] == queue_id
        assert (rcpt["Action"], rcpt["Status"]) == ("failed", "5.1.1")
        assert "user unknown" in rcpt["Diagnostic-Code"]
        assert list(notice.iter_parts())[2].get_content_type() == "text/rfc822-headers"
        assert len(deliverer.attempts) == 1
    finally:
        await service.close()


async def test_deferred_notifies_once_then_delivered_notifies_success(short_tmp: Path) -> None:
    config = outbound_config(short_tmp)
    deliverer = ScriptedDeliverer(
        Reply(451, "4.7.1 try later"), Reply(451, "4.7.1 try later"), Reply(250, "2.0.0 ok")
    )
    service = await start(config, deliverer)
    try:
        await submit(config)
        await wait_for(
            lambda: not [e for e in list_entries(config.gateway.spool_path) if e.kind == "out"],
            what="the reply delivered",
        )
        actions = sorted(report_fields(n)[1]["Action"] for n in notices(config))
        assert actions == ["delayed", "delivered"]
        assert len(deliverer.attempts) == 3
    finally:
        await service.close()


async def test_giving_up_bounces_and_notify_never_stays_silent(short_tmp: Path) -> None:
    config = outbound_config(short_tmp)
    deliverer = ScriptedDeliverer(Reply(451, "4.4.1 connection refused"))
    service = await start(config, deliverer)
    try:
        entry_started = time.time()
        await submit(config, notify="FAILURE")
        await submit(config, notify="NEVER", rcpts=("quiet@example.com",))
        # hold_after is 30 s in this config: make both entries look old instead of waiting.
        with sqlite3.connect(config.gateway.spool_path) as conn:
            conn.execute("UPDATE entries SET created=?", (entry_started - 3600,))
        await wait_for(
            lambda: not [e for e in list_entries(config.gateway.spool_path) if e.kind == "out"],
            what="both entries given up",
        )
        [notice] = notices(config)
        rcpt = report_fields(notice)[1]
        assert (rcpt["Action"], rcpt["Final-Recipient"]) == (
            "failed",
            "rfc822; cliente@example.com",
        )
        assert "gave up" in rcpt["Diagnostic-Code"]
    finally:
        await service.close()
