"""The outbound deliverer against real SMTP servers on loopback: Postfix's smtp-sink, aiosmtpd."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from conftest import wait_for
from daemons import free_port
from dns_server import DnsServer
from postfix_harness import port_open
from sink import Sink
from tls_files import make_tls_files

from mxdesk.config import Listen, OutboundConfig
from mxdesk.gateway import outbound
from mxdesk.gateway.outbound import RemoteReply, Smarthost, SmtpDeliverer
from mxdesk.gateway.spool import Recipient, SpoolEntry, new_queue_id

SENDER = "suporte@marca.helpdesk.example"
BODY = (
    b'From: "Suporte Marca" <suporte@marca.helpdesk.example>\r\nTo: cliente@a.example\r\n'
    b"Subject: Re: Pedido\r\nMessage-ID: <t1@marca.helpdesk.example>\r\n\r\n"
    b"Ol\xc3\xa1,\r\n.uma linha que comeca com ponto\r\n.\r\nfim\r\n"
)
USER, PASSWORD = "ana@empresa.example", "s3cret"
REFUSED_SENDER = "outro@empresa.example"


def make_entry(*rcpts: str, data: bytes = BODY, sender: str = SENDER) -> SpoolEntry:
    recipients = tuple(Recipient(a, a, "marca") for a in rcpts)  # tenant "marca": the sender's
    now, size = time.time(), len(data)
    envelope = (new_queue_id(), "out", now, "local", sender, size, "delivering", 0, now, "")
    return SpoolEntry(*envelope, recipients=recipients, data=data)


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    server = DnsServer()
    for domain in ("a.example", "b.example"):
        server.add(domain, "MX", f"10 mx.{domain}.").add(f"mx.{domain}", "A", "127.0.0.1")
    yield server
    server.close()


def deliverer(
    dns: DnsServer, port: int, smarthost: Smarthost | None = None, **config: Any
) -> SmtpDeliverer:
    nameservers = (Listen(dns.host, dns.port),)
    cfg = OutboundConfig(
        smtp_port=port, nameservers=nameservers, connect_timeout=5.0, command_timeout=10.0, **config
    )
    return SmtpDeliverer(cfg, "mx.helpdesk.example", lambda tenant: smarthost)


# -- Postfix's smtp-sink ---------------------------------------------------------------------


@pytest.fixture
async def sink(short_tmp: Path) -> AsyncIterator[Callable[..., Awaitable[Sink]]]:
    started: list[Sink] = []

    async def start(*flags: str) -> Sink:
        started.append(Sink(short_tmp, flags))
        await wait_for(lambda: port_open(started[-1].port), what="smtp-sink listening")
        return started[-1]

    yield start
    for s in started:
        s.close()


async def test_delivered_to_two_domains_byte_for_byte(dns: DnsServer, sink: Any) -> None:
    s = await sink()
    d = deliverer(dns, s.port)
    rcpts = ("um@a.example", "dois@a.example", "tres@b.example")
    replies = await d.deliver(make_entry(*rcpts))
    await d.close()
    assert set(replies) == set(rcpts)
    assert all(r.code == 250 for r in replies.values()), replies
    assert isinstance(replies["tres@b.example"], RemoteReply)
    assert replies["tres@b.example"].remote == "mx.b.example[127.0.0.1]"
    assert replies["um@a.example"].remote == "mx.a.example[127.0.0.1]"
    dumps = await wait_for(lambda: len(s.messages()) == 2 and s.messages(), what="two dumps")
    expected = BODY.replace(b"\r\n", b"\n") + b"\n"  # smtp-sink's dump format: LF, then a blank
    assert all(m.endswith(expected) for m in dumps)
    rcpt_lines = sorted(line for m in dumps for line in m.splitlines() if b"X-Rcpt-Args" in line)
    assert rcpt_lines == sorted(f"X-Rcpt-Args: <{a}>".encode() for a in rcpts)
    assert all(f"X-Mail-Args: <{SENDER}>".encode() in m for m in dumps)


@pytest.mark.parametrize(
    ("flags", "code", "temporary"),
    [(("-r", "rcpt"), 450, True), (("-f", "rcpt"), 500, False), (("-q", "."), 451, True)],
    ids=["rcpt-4xx", "rcpt-5xx", "disconnect-after-dot"],
)
async def test_refusals_and_lost_connections(
    dns: DnsServer, sink: Any, flags: tuple[str, ...], code: int, temporary: bool
) -> None:
    s = await sink(*flags)
    d = deliverer(dns, s.port)
    replies = await d.deliver(make_entry("um@a.example", "dois@a.example"))
    await d.close()
    assert {r.code for r in replies.values()} == {code}
    assert all(r.temporary == temporary for r in replies.values())


@pytest.mark.parametrize(("flag", "code"), [("-r", 450), ("-f", 500)], ids=["4xx", "5xx"])
async def test_greeting_refused_by_every_host(
    dns: DnsServer, sink: Any, flag: str, code: int
) -> None:
    dns.add("a.example", "MX", "20 mx.b.example.")  # two hosts, the same refusal
    s = await sink(flag, "connect")
    replies = await deliverer(dns, s.port).deliver(make_entry("um@a.example"))
    reply = replies["um@a.example"]
    # Only when every host refuses with 5xx is it final (Postfix: smtp_skip_5xx_greeting).
    assert reply.code == code and "refused to talk to me" in reply.text


async def test_a_5xx_greeting_is_skipped_for_the_next_mx(
    dns: DnsServer, sink: Any, short_tmp: Path
) -> None:
    """RFC 5321 §3.1: a 554 greeting is that host's refusal; the next MX takes the message."""
    dns.add("c.example", "MX", "10 cheio.c.example.", "20 up.c.example.")
    dns.add("cheio.c.example", "A", "127.0.0.2").add("up.c.example", "A", "127.0.0.1")
    s = await sink()
    refusing = Sink(short_tmp, ("-f", "connect"), port=s.port, host="127.0.0.2")
    try:
        await wait_for(lambda: port_open(s.port, "127.0.0.2"), what="the refusing sink")
        replies = await deliverer(dns, s.port).deliver(make_entry("um@c.example"))
    finally:
        refusing.close()
    assert replies["um@c.example"].code == 250, replies
    assert getattr(replies["um@c.example"], "remote", "") == "up.c.example[127.0.0.1]"
    await wait_for(lambda: len(s.messages()) == 1, what="the message at the second MX")


async def test_first_mx_down_second_takes_it(dns: DnsServer, sink: Any) -> None:
    dns.add("c.example", "MX", "10 down.c.example.", "20 up.c.example.")
    dns.add("down.c.example", "A", "127.0.0.2").add("up.c.example", "A", "127.0.0.1")
    s = await sink()
    replies = await deliverer(dns, s.port).deliver(make_entry("um@c.example"))
    assert replies["um@c.example"].code == 250
    assert getattr(replies["um@c.example"], "remote", "") == "up.c.example[127.0.0.1]"


async def test_no_server_to_take_it(dns: DnsServer) -> None:
    dns.add("c.example", "MX", "10 down.c.example.").add("down.c.example", "A", "127.0.0.2")
    dns.add("null.example", "MX", "0 .")
    entry = make_entry("um@c.example", "x@null.example", "y@no.example")
    replies = await deliverer(dns, free_port()).deliver(entry)
    down = replies["um@c.example"]  # every MX down: temporary, naming the last one tried
    assert down.code == 451 and "down.c.example[127.0.0.2]" in down.text, down
    assert str(replies["x@null.example"]).startswith("556 5.1.10 ")
    assert str(replies["y@no.example"]).startswith("550 5.1.2 ")


async def test_non_ascii_address_needs_smtputf8(dns: DnsServer, sink: Any) -> None:
    s = await sink()  # smtp-sink does not offer SMTPUTF8
    replies = await deliverer(dns, s.port).deliver(make_entry("josé@a.example"))
    assert str(replies["josé@a.example"]).startswith("553 5.6.7 ")


# -- aiosmtpd servers in the test's event loop -----------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    content: bytes
    tls: bool  # over TLS, implicit or STARTTLS


class Recorder:
    """aiosmtpd handler: keeps what it took; refuses recipients "busy…" (4xx), "nobody…" (5xx)."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.gate: asyncio.Event | None = None
        self.in_data = 0
        self.pipelining = False  # offer PIPELINING (aiosmtpd takes pipelined commands anyway)

    async def handle_EHLO(
        self, server: SMTP, sess: Any, env: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        sess.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(self, server: SMTP, sess: Any, env: Any, address: str, _: Any) -> str:
        if address == REFUSED_SENDER:
            return "553 5.7.1 Sender address rejected: not owned by user ana@empresa.example"
        env.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, sess: Any, env: Any, address: str, _: Any) -> str:
        if address.startswith("busy"):
            return "450 4.2.1 Mailbox busy"
        if address.startswith("nobody"):
            return "550 5.1.1 No such user"
        env.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.in_data += 1
        if self.gate is not None:
            await self.gate.wait()
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, tls)
        )
        return "250 2.0.0 Ok: queued"


class Server:
    """An aiosmtpd SMTP server on 127.0.0.1 that counts its connections."""

    def __init__(self, **smtp: Any) -> None:
        self.handler = Recorder()
        self.smtp = smtp
        self.open = self.peak = self.total = 0
        self.chunks: list[bytes] = []  # what each read from a client brought
        self.drop_next = False  # close the connection that sends next, reading nothing of it
        self.transports: list[asyncio.BaseTransport] = []
        self.server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        owner = self

        class Counting(SMTP):  # type: ignore[misc]
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if self.transport is None:  # not the second call after STARTTLS
                    owner.open, owner.total = owner.open + 1, owner.total + 1
                    owner.peak = max(owner.peak, owner.open)
                    owner.transports.append(transport)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                owner.open -= 1
                super().connection_lost(error)

            def data_received(self, data: bytes) -> None:
                owner.chunks.append(data)
                if owner.drop_next:
                    owner.drop_next = False
                    assert self.transport is not None
                    self.transport.close()
                    return
                super().data_received(data)

        loop = asyncio.get_running_loop()
        factory = lambda: Counting(self.handler, **self.smtp)  # noqa: E731
        self.server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in self.transports:
            t.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    started: list[Server] = []

    async def start(tls: ssl.SSLContext | None = None, **smtp: Any) -> Server:
        started.append(await Server(**smtp).start(tls))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"), "smtp.empresa.example")


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files[1], tls_files[2])
    return context


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
async def test_replies_per_recipient(dns: DnsServer, servers: Any, pipelining: bool) -> None:
    s = await servers()
    s.handler.pipelining = pipelining
    d = deliverer(dns, s.port)
    rcpts = ("ok@a.example", "busy@a.example", "nobody@a.example")
    replies = await d.deliver(make_entry(*rcpts))
    assert [replies[a].code for a in rcpts] == [250, 450, 550]
    assert replies["nobody@a.example"].text == "5.1.1 No such user"
    (m,) = s.handler.messages
    assert m.rcpts == ["ok@a.example"] and m.content == BODY and m.mail_from == SENDER
    # With PIPELINING the envelope arrives in one read, without it one command per read.
    envelope = [c for c in s.chunks if b"MAIL FROM" in c or b"RCPT TO" in c]
    assert len(envelope) == (1 if pipelining else 4)
    if pipelining:
        assert envelope[0].count(b"RCPT TO") == 3 and envelope[0].endswith(b"DATA\r\n")
    # Refused sender, and no recipient taken: the connection is left clean for the next one.
    replies = await d.deliver(make_entry("ok@a.example", sender=REFUSED_SENDER))
    assert replies["ok@a.example"].code == 553
    replies = await d.deliver(make_entry("nobody@a.example", "busy@b.example"))
    assert [r.code for r in replies.values()] == [550, 450]
    replies = await d.deliver(make_entry("ok@a.example"))
    assert replies["ok@a.example"].code == 250 and len(s.handler.messages) == 2
    assert s.total == 2  # a.example's connection kept throughout, b.example's its own
    await d.close()


async def test_message_over_the_announced_size_is_refused(dns: DnsServer, servers: Any) -> None:
    data = b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n"  # no dots: aiosmtpd counts them
    s = await servers(data_size_limit=len(data) - 1)
    replies = await deliverer(dns, s.port).deliver(make_entry("ok@a.example", data=data))
    assert str(replies["ok@a.example"]).startswith("552 5.3.4 ")
    assert not s.handler.in_data  # refused without sending it
    s2 = await servers(data_size_limit=len(data))  # at the limit: it goes
    replies = await deliverer(dns, s2.port).deliver(make_entry("ok@a.example", data=data))
    assert replies["ok@a.example"].code == 250


async def test_per_destination_limit_and_reuse(dns: DnsServer, servers: Any) -> None:
    s = await servers()
    s.handler.gate = asyncio.Event()
    d = deliverer(dns, s.port, per_destination=2)
    sending = asyncio.gather(*(d.deliver(make_entry(f"ok{i}@a.example")) for i in range(6)))
    await wait_for(lambda: s.handler.in_data >= 2, what="two transactions in DATA")
    s.handler.gate.set()
    results = await sending
    assert all(r[f"ok{i}@a.example"].code == 250 for i, r in enumerate(results))
    assert (s.peak, s.total) == (2, 2)  # the later messages reused the two connections
    await d.close()
    await wait_for(lambda: s.open == 0, what="close() to end the idle connections")


async def test_kept_connection_reused_then_dropped(
    dns: DnsServer, servers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await servers()
    d = deliverer(dns, s.port)
    for _ in range(2):
        assert (await d.deliver(make_entry("ok@a.example")))["ok@a.example"].code == 250
    assert s.total == 1
    s.transports[0].close()  # the server drops the idle connection; the next message notices
    assert (await d.deliver(make_entry("ok@b.example")))["ok@b.example"].code == 250
    assert (await d.deliver(make_entry("ok@a.example")))["ok@a.example"].code == 250
    assert s.total == 3  # a new one for b.example, and one after the dropped one
    monkeypatch.setattr(outbound, "IDLE_SECONDS", 0.05)
    await d.deliver(make_entry("ok@a.example"))
    await wait_for(lambda: s.open == 1, what="an idle connection to expire")  # b.example's stays
    await d.close()


async def test_a_kept_connection_is_checked_in_the_pipelined_group(
    dns: DnsServer, servers: Any
) -> None:
    """With PIPELINING the RSET that checks a kept connection leads the next transaction's
    commands (no round trip of its own); a connection that turns out closed then costs
    nothing but a new one: the message is neither deferred nor delivered twice."""
    s = await servers()
    s.handler.pipelining = True
    d = deliverer(dns, s.port)
    for _ in range(2):
        assert (await d.deliver(make_entry("ok@a.example")))["ok@a.example"].code == 250
    assert s.total == 1
    assert any(c.startswith(b"RSET\r\nMAIL FROM:") for c in s.chunks)
    s.drop_next = True  # closed by the server just as the next group arrives
    assert (await d.deliver(make_entry("ok@a.example")))["ok@a.example"].code == 250
    assert s.total == 2 and len(s.handler.messages) == 3
    await d.close()


async def test_opportunistic_tls(
    dns: DnsServer, servers: Any, server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    s = await servers(tls_context=server_tls)
    with caplog.at_level(logging.INFO, "mxdesk.gateway.outbound"):
        replies = await deliverer(dns, s.port).deliver(make_entry("ok@a.example"))
    assert replies["ok@a.example"].code == 250
    assert s.handler.messages[0].tls  # the certificate is not verified (RFC 7435)
    assert f"relay=mx.a.example[127.0.0.1]:{s.port} tls=yes status=sent" in caplog.text
    plain = await servers(tls_context=server_tls)
    replies = await deliverer(dns, plain.port, tls="none").deliver(make_entry("ok@a.example"))
    assert replies["ok@a.example"].code == 250 and not plain.handler.messages[0].tls


async def test_failed_handshake_falls_back_to_plain_text(
    dns: DnsServer, servers: Any, tls_files: tuple[Path, Path, Path]
) -> None:
    broken = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    broken.load_cert_chain(tls_files[1], tls_files[2])
    broken.set_ciphers("aNULL")  # nothing a client will accept: every handshake fails
    broken.maximum_version = ssl.TLSVersion.TLSv1_2
    s = await servers(tls_context=broken)
    replies = await deliverer(dns, s.port).deliver(make_entry("ok@a.example"))
    assert replies["ok@a.example"].code == 250, replies
    assert s.total == 2 and not s.handler.messages[0].tls


# -- smarthosts ------------------------------------------------------------------------------


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    login = (USER.encode(), PASSWORD.encode())
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == login
    return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535 itself


def smarthost(port: int, security: str = "none", **kw: Any) -> Smarthost:
    values: dict[str, Any] = {"user": USER, "password": PASSWORD, "address": USER} | kw
    return Smarthost("127.0.0.1", port, security, **values)


async def via(dns: DnsServer, host: Smarthost, rcpt: str = "cliente@a.example") -> Any:
    d = deliverer(dns, free_port(), smarthost=host)  # the MX port is never used
    replies = await d.deliver(make_entry(rcpt, "outro@b.example"))
    await d.close()
    assert replies[rcpt] == replies["outro@b.example"]  # one transaction for both
    return replies[rcpt]


async def test_smarthost_login_and_envelope_sender(dns: DnsServer, servers: Any) -> None:
    s = await servers(authenticator=authenticate, auth_require_tls=False)
    reply = await via(dns, smarthost(s.port))
    assert reply.code == 250 and reply.remote == "127.0.0.1[127.0.0.1]"
    (m,) = s.handler.messages
    assert m.mail_from == USER and m.rcpts == ["cliente@a.example", "outro@b.example"]
    reply = await via(dns, smarthost(s.port, address=""))  # "" keeps the entry's sender
    assert reply.code == 250 and s.handler.messages[1].mail_from == SENDER


async def test_smarthost_refusals_say_what_failed(dns: DnsServer, servers: Any) -> None:
    s = await servers(authenticator=authenticate, auth_require_tls=False)
    name = f"smarthost 127.0.0.1:{s.port}"
    reply = await via(dns, smarthost(s.port, password="wrong"))
    assert str(reply) == (
        f"454 4.7.8 {name} refused the login for user '{USER}': "
        "535 5.7.8 Authentication credentials invalid"
    )
    reply = await via(dns, smarthost(s.port, address=REFUSED_SENDER))
    assert str(reply).startswith(f"553 5.7.1 {name} refused the sender <{REFUSED_SENDER}>: 553 ")
    assert not reply.temporary
    reply = await via(dns, smarthost(s.port, security="starttls"))
    assert str(reply) == f"451 4.7.4 {name} does not offer STARTTLS"
    down = free_port()
    reply = await via(dns, smarthost(down))
    assert reply.code == 451 and f"smarthost 127.0.0.1:{down}: cannot connect" in reply.text


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_smarthost_tls_verified_against_a_ca(
    dns: DnsServer, servers: Any, server_tls: ssl.SSLContext, tls_files: Any, security: str
) -> None:
    if security == "ssl":  # aiosmtpd knows TLS only from STARTTLS: allow AUTH anyway
        s = await servers(server_tls, authenticator=authenticate, auth_require_tls=False)
    else:
        s = await servers(authenticator=authenticate, tls_context=server_tls)
    ca = str(tls_files[0])
    assert (await via(dns, smarthost(s.port, security, ca_file=ca))).code == 250
    assert (await via(dns, smarthost(s.port, security, verify=False))).code == 250
    assert all(m.tls for m in s.handler.messages)
    reply = await via(dns, smarthost(s.port, security))  # the system CAs do not know the test CA
    assert reply.code == 451 and "CERTIFICATE_VERIFY_FAILED" in reply.text
    assert f"smarthost 127.0.0.1:{s.port}" in reply.text
